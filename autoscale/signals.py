"""PromQL for one deployment's engines, and the `EngineSignals` read from the answers.

Every query selects the deployment's own model (`model_name`, the name vLLM reports), so one
deployment's load never scales another. Per-replica gauges are grouped by vLLM's `ReplicaId`
label and kept only for replicas Serve says are running: a stopped replica's last values and a
starting replica's missing ones do not skew the sums.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from autoscale.decision import EngineSignals


@dataclass(frozen=True)
class EngineQueries:
    waiting: str
    running: str
    kv_cache_usage: str
    ttft_p95: str
    data_age: str

    @classmethod
    def for_model(cls, model_name: str, ttft_window_s: float) -> EngineQueries:
        selector = f'{{model_name="{_escape(model_name)}"}}'
        window = f"{ttft_window_s:g}s"
        return cls(
            waiting=f"max by (ReplicaId) (ray_vllm_num_requests_waiting{selector})",
            running=f"max by (ReplicaId) (ray_vllm_num_requests_running{selector})",
            kv_cache_usage=f"max by (ReplicaId) (ray_vllm_kv_cache_usage_perc{selector})",
            ttft_p95=(
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(ray_vllm_time_to_first_token_seconds_bucket{selector}[{window}])))"
            ),
            data_age=f"time() - max(timestamp(ray_vllm_num_requests_running{selector}))",
        )

    def all(self) -> list[str]:
        return [self.waiting, self.running, self.kv_cache_usage, self.ttft_p95, self.data_age]


class SignalsUnavailable(Exception):
    """Prometheus answered, but not with data the policy can act on; the message says why."""


def read_signals(
    results: Mapping[str, object],
    queries: EngineQueries,
    running_replicas: Iterable[str],
    max_data_age_s: float,
) -> EngineSignals:
    """`results`: PrometheusQueryMixin.prometheus_results (query -> scalar or vector)."""
    age = _single(results.get(queries.data_age))
    if age is None:
        raise SignalsUnavailable("no_engine_metrics")
    if age > max_data_age_s:
        raise SignalsUnavailable(f"stale_metrics_{age:.0f}s")
    live = set(running_replicas)
    waiting = _per_replica(results.get(queries.waiting), live)
    running = _per_replica(results.get(queries.running), live)
    kv_usage = _per_replica(results.get(queries.kv_cache_usage), live)
    if not running:
        raise SignalsUnavailable("no_running_replica_reports")
    return EngineSignals(
        replicas_reporting=len(running),
        waiting=sum(waiting.values()),
        running=sum(running.values()),
        kv_cache_usage=sum(kv_usage.values()) / len(kv_usage) if kv_usage else 0.0,
        ttft_p95_s=_single(results.get(queries.ttft_p95)),
    )


def _per_replica(result, live: set[str]) -> dict[str, float]:
    samples = getattr(result, "samples", ())
    return {s.labels.get("ReplicaId", ""): s.value for s in samples if s.labels.get("ReplicaId") in live}


def _single(result) -> float | None:
    if result is None:
        return None
    if hasattr(result, "samples"):
        return result.samples[0].value if len(result.samples) == 1 else None
    return result.value


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
