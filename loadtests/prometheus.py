"""The Prometheus series a load test pulls for its own window: one table of queries."""

from __future__ import annotations

from dataclasses import dataclass

QUERIES = {
    "replicas": "sum by (deployment) (ray_serve_deployment_replica_healthy)",
    "kv_cache_usage": "max by (model_name) (ray_vllm_kv_cache_usage_perc)",
    "requests_running": "sum by (model_name) (ray_vllm_num_requests_running)",
    "requests_waiting": "sum by (model_name) (ray_vllm_num_requests_waiting)",
}


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (epoch seconds, value)

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "all"

    def mean(self) -> float | None:
        return sum(v for _, v in self.points) / len(self.points) if self.points else None


def parse_matrix(payload: dict) -> list[Series]:
    """The result of a /api/v1/query_range response."""
    if payload.get("status") != "success":
        raise ValueError(f"Prometheus answered {payload.get('status')}: {payload.get('error', '')}")
    data = payload["data"]
    if data.get("resultType") != "matrix":
        raise ValueError(f"expected a matrix, got {data.get('resultType')}")
    return [
        Series(labels=item.get("metric", {}), points=[(float(t), float(v)) for t, v in item.get("values", [])])
        for item in data["result"]
    ]


def pull(base_url: str, start: float, end: float, step_s: float = 2.0, timeout_s: float = 10.0) -> tuple[dict[str, list[Series]], list[str]]:
    """Every query in QUERIES over [start, end]; failed queries come back as messages."""
    import httpx

    series: dict[str, list[Series]] = {}
    problems: list[str] = []
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s) as client:
        for name, query in QUERIES.items():
            try:
                response = client.get(
                    "/api/v1/query_range", params={"query": query, "start": start, "end": end, "step": step_s}
                )
                series[name] = parse_matrix(response.json())
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                problems.append(f"{name}: {exc}")
    return series, problems


def mean_replicas(series: dict[str, list[Series]]) -> dict[str, float]:
    """Mean healthy replicas per deployment over the window."""
    out = {}
    for s in series.get("replicas", []):
        value = s.mean()
        if "deployment" in s.labels and value:
            out[s.labels["deployment"]] = round(value, 2)
    return out
