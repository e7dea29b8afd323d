"""How many replicas a deployment needs, from what its engines report. Pure: no Ray, no I/O.

Up fast: any pressure over its threshold (requests waiting per replica, KV-cache usage, p95
TTFT against the tightest tenant SLO) asks at once for the replicas that bring the worst one
back under 1. Down slowly: only when nothing waits, the KV cache is cool and TTFT is well
inside the SLO, one replica at a time, and never below what the requests in flight need.
Without usable Prometheus data it sizes on Serve's own ongoing-request count and says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PolicyParams:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    ttft_slo_s: float | None = None
    waiting_per_replica: float = 1.0
    kv_cache_usage_high: float = 0.85
    kv_cache_usage_low: float = 0.5
    ttft_low_fraction: float = 0.5


@dataclass(frozen=True)
class EngineSignals:
    """What the running replicas' engines report, summed or averaged over those replicas."""

    replicas_reporting: int
    waiting: float
    running: float
    kv_cache_usage: float
    ttft_p95_s: float | None = None


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    inputs: dict[str, float | int | str | None] = field(default_factory=dict)

    @property
    def is_fallback(self) -> bool:
        return self.reason.startswith("fallback")


def decide(signals: EngineSignals, current: int, target: int, params: PolicyParams) -> Decision:
    """`current`: replicas running; `target`: replicas Serve is already aiming for."""
    replicas = max(current, 1)
    pressures = {
        "waiting_requests": signals.waiting / (replicas * params.waiting_per_replica),
        "kv_cache": signals.kv_cache_usage / params.kv_cache_usage_high,
    }
    if params.ttft_slo_s and signals.ttft_p95_s is not None:
        pressures["ttft_slo"] = signals.ttft_p95_s / params.ttft_slo_s
    worst = max(pressures, key=pressures.get)
    inputs = {
        "current": current, "target": target, "waiting": signals.waiting, "running": signals.running,
        "kv_cache_usage": round(signals.kv_cache_usage, 4), "ttft_p95_s": signals.ttft_p95_s,
        "ttft_slo_s": params.ttft_slo_s, "replicas_reporting": signals.replicas_reporting,
        **{f"pressure_{name}": round(value, 3) for name, value in pressures.items()},
    }  # fmt: skip
    if pressures[worst] > 1:
        wanted = max(target, current + 1, math.ceil(replicas * pressures[worst]))
        return Decision(_bounded(wanted, params), f"scale_up_{worst}", inputs)

    needed_for_in_flight = math.ceil(signals.running / params.target_ongoing_requests)
    cool = (
        signals.waiting == 0
        and signals.kv_cache_usage < params.kv_cache_usage_low
        and (signals.ttft_p95_s is None or not params.ttft_slo_s
             or signals.ttft_p95_s < params.ttft_low_fraction * params.ttft_slo_s)
    )  # fmt: skip
    if cool and needed_for_in_flight < current:
        return Decision(_bounded(current - 1, params), "scale_down_idle", inputs)
    if cool and target > current:  # the pressure that asked for them is gone before they started (or found room)
        return Decision(_bounded(current, params), "scale_down_pending", inputs)
    return Decision(_bounded(target, params), "hold", inputs)


def fallback(total_requests: float, current: int, target: int, params: PolicyParams, why: str) -> Decision:
    """Serve's default sizing: in-flight requests over the per-replica target."""
    desired = math.ceil(total_requests / params.target_ongoing_requests) if current else target
    inputs = {"current": current, "target": target, "ongoing_requests": total_requests, "why": why}
    return Decision(_bounded(desired, params), "fallback_ongoing_requests", inputs)


def _bounded(replicas: int, params: PolicyParams) -> int:
    return min(max(replicas, params.min_replicas), params.max_replicas)
