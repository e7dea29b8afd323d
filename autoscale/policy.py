"""`PrometheusPolicy`: a Ray Serve custom autoscaling policy driven by the engines' metrics.

Serve's controller instantiates the class once with the deployment's `policy_kwargs` (written
by the planner, see `autoscale.policy_plan`) and calls it with an `AutoscalingContext` about
ten times a second; Serve then applies the upscale/downscale delays and the min/max bounds
around what it returns. `PrometheusQueryMixin` keeps the query results fresh on a background
thread, so a call never waits on the network.
"""

from __future__ import annotations

from typing import Any

from ray.serve.autoscaling_policy import PrometheusQueryMixin
from ray.serve.config import AutoscalingContext

from autoscale.decision import Decision, PolicyParams, decide, fallback
from autoscale.decision_record import DecisionRecorder
from autoscale.signals import EngineQueries, SignalsUnavailable, read_signals


class PrometheusPolicy(PrometheusQueryMixin):
    def __init__(
        self,
        *,
        deployment: str,
        model_name: str,
        min_replicas: int,
        max_replicas: int,
        target_ongoing_requests: float,
        ttft_slo_ms: float | None = None,
        waiting_per_replica: float = 1.0,
        kv_cache_usage_high: float = 0.85,
        kv_cache_usage_low: float = 0.5,
        ttft_window_s: float = 60.0,
        max_data_age_s: float = 30.0,
        prometheus_address: str | None = None,
        fetch_interval_s: float = 5.0,
        cache_ttl_s: float = 15.0,
    ):
        self.queries = EngineQueries.for_model(model_name, ttft_window_s)
        super().__init__(
            prometheus_address=prometheus_address,
            prometheus_queries=self.queries.all(),
            fetch_interval_s=fetch_interval_s,
            cache_ttl_s=cache_ttl_s,
        )
        self.params = PolicyParams(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_ongoing_requests=target_ongoing_requests,
            ttft_slo_s=ttft_slo_ms / 1e3 if ttft_slo_ms else None,
            waiting_per_replica=waiting_per_replica,
            kv_cache_usage_high=kv_cache_usage_high,
            kv_cache_usage_low=kv_cache_usage_low,
        )
        self.max_data_age_s = max_data_age_s
        self.recorder = DecisionRecorder(deployment)

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        decision = self.decide(ctx, self.prometheus_results)
        self.recorder.record(decision)
        return decision.desired, {"paliserve_reason": decision.reason}

    def decide(self, ctx: AutoscalingContext, results: dict | None) -> Decision:
        current, target = ctx.current_num_replicas, ctx.target_num_replicas
        if results is None:
            why = "prometheus_unreachable" if self._prometheus_address else "no_prometheus_address"
            return fallback(ctx.total_num_requests, current, target, self.params, why)
        running = [replica.unique_id for replica in ctx.running_replicas]
        try:
            signals = read_signals(results, self.queries, running, self.max_data_age_s)
        except SignalsUnavailable as why:
            return fallback(ctx.total_num_requests, current, target, self.params, str(why))
        return decide(signals, current, target, self.params)
