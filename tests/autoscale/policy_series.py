"""Prometheus answers for the policy's queries, in the HTTP API's JSON shape and with the label
sets the live stack exports (vLLM's `model_name`, `engine`, `ReplicaId` beside Ray's own)."""

from __future__ import annotations

from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import PrometheusSample, PrometheusScalar, PrometheusVector
from ray.serve.config import AutoscalingConfig, AutoscalingContext

MODEL = "tiny-paligemma"
NOW = 1_795_410_280.0
RAY_LABELS = {"Component": "core_worker", "NodeAddress": "127.0.0.1", "SessionName": "session_x", "job": "ray"}


def api_vector(per_replica: dict[str, float]) -> dict:
    """A `data` object of /api/v1/query for a `max by (ReplicaId)` query."""
    return {
        "resultType": "vector",
        "result": [{"metric": {"ReplicaId": rid}, "value": [NOW, str(v)]} for rid, v in per_replica.items()],
    }


def api_scalar_vector(value: float | None) -> dict:
    result = [] if value is None else [{"metric": {}, "value": [NOW, str(value)]}]
    return {"resultType": "vector", "result": result}


def parsed(data: dict):
    """What PrometheusQueryMixin keeps for one answer (NaN samples dropped, as Ray does)."""
    if data["resultType"] == "scalar":
        return PrometheusScalar(value=float(data["result"][1]), timestamp=data["result"][0])
    samples = [
        PrometheusSample(labels=item["metric"], value=float(item["value"][1]), timestamp=item["value"][0])
        for item in data["result"]
        if item["value"][1] not in ("NaN", "+Inf", "-Inf")
    ]
    return PrometheusVector(samples=tuple(samples))


def recorded(queries, waiting, running, kv, ttft_p95_s=None, age_s=2.0) -> dict:
    """One fetch of every query, as the mixin's cache holds it; an empty answer is left out."""
    answers = {
        queries.waiting: api_vector(waiting),
        queries.running: api_vector(running),
        queries.kv_cache_usage: api_vector(kv),
        queries.ttft_p95: api_scalar_vector(ttft_p95_s),
        queries.data_age: api_scalar_vector(age_s),
    }
    return {q: parsed(data) for q, data in answers.items() if data["result"]}


def context(current: int, target: int | None = None, total_requests: float = 0.0, replicas=None,
            min_replicas=1, max_replicas=3, target_ongoing=8.0, upscale_delay_s=0.0,
            downscale_delay_s=0.0, policy_state=None) -> AutoscalingContext:  # fmt: skip
    deployment = DeploymentID(name=MODEL, app_name="paliserve")
    ids = replicas if replicas is not None else [f"r{i}" for i in range(current)]
    config = AutoscalingConfig(
        min_replicas=min_replicas, max_replicas=max_replicas, target_ongoing_requests=target_ongoing,
        upscale_delay_s=upscale_delay_s, downscale_delay_s=downscale_delay_s,
    )  # fmt: skip
    return AutoscalingContext(
        deployment_id=deployment, deployment_name=MODEL, app_name="paliserve",
        current_num_replicas=current, target_num_replicas=current if target is None else target,
        running_replicas=[ReplicaID(unique_id=i, deployment_id=deployment) for i in ids],
        total_num_requests=total_requests, total_queued_requests=0.0,
        aggregated_metrics={}, raw_metrics={},
        capacity_adjusted_min_replicas=min_replicas, capacity_adjusted_max_replicas=max_replicas,
        policy_state=policy_state or {}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=NOW, config=config,
    )  # fmt: skip
