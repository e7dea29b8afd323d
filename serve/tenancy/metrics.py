"""Per-tenant gateway metrics through Ray's metrics pipeline, batched (`serve.batched_metrics`):
exported on the Ray metrics port as `ray_paliserve_*`, labelled `tenant` and `model` (never a key).

Created inside the replica: Ray metrics need a connected worker.
"""

from __future__ import annotations

from serve.batched_metrics import BatchedCounter, BatchedGauge, BatchedHistogram

LABELS = ("tenant", "model")
LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TPOT_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
OPEN_TENANT = "-"  # label of requests served without tenants (a plan with no tenants)


class TenantMetrics:
    def __init__(self):
        self.requests = BatchedCounter(
            "paliserve_requests", "Requests by final HTTP status.", tag_keys=(*LABELS, "status")
        )
        self.rejections = BatchedCounter(
            "paliserve_rejections", "Requests refused before reaching an engine, by reason.", tag_keys=(*LABELS, "reason")
        )
        self.prompt_tokens = BatchedCounter("paliserve_prompt_tokens", "Prompt tokens of served requests.", tag_keys=LABELS)
        self.generation_tokens = BatchedCounter(
            "paliserve_generation_tokens", "Generated tokens of served requests.", tag_keys=LABELS
        )
        self.image_tokens = BatchedCounter(
            "paliserve_image_tokens", "Image tokens of served requests (part of their prompt tokens).", tag_keys=LABELS
        )
        self.ttft = BatchedHistogram(
            "paliserve_time_to_first_token_seconds", "Gateway receipt to first token (streams).",
            boundaries=LATENCY_BUCKETS_S, tag_keys=LABELS,
        )  # fmt: skip
        self.tpot = BatchedHistogram(
            "paliserve_time_per_output_token_seconds", "(E2E - TTFT) / (generated tokens - 1) (streams).",
            boundaries=TPOT_BUCKETS_S, tag_keys=LABELS,
        )  # fmt: skip
        self.e2e = BatchedHistogram(
            "paliserve_e2e_request_latency_seconds", "Gateway receipt to last token.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=LABELS,
        )  # fmt: skip
        self.in_flight = BatchedGauge("paliserve_requests_in_flight", "Requests past their quota and not finished (waiting for or at an engine).", tag_keys=LABELS)
        self.queue_depth = BatchedGauge(
            "paliserve_queue_depth", "Requests waiting in the fair queue for an engine slot.", tag_keys=LABELS
        )

    @staticmethod
    def tags(tenant: str | None, model: str, **extra: str) -> dict[str, str]:
        return {"tenant": tenant or OPEN_TENANT, "model": model, **extra}


class EngineUsageMetrics:
    """Created by each engine replica (in its process): its busy time apportioned to tenants by
    tokens (`serve.tenancy.showback.EngineClock`)."""

    def __init__(self):
        self.engine_seconds = BatchedCounter(
            "paliserve_engine_seconds",
            "Engine replica busy time apportioned to requests by their tokens (prompt + generated).",
            tag_keys=LABELS,
        )

    def record(self, key: tuple[str, str], seconds: float) -> None:
        if seconds > 0:
            self.engine_seconds.inc(seconds, tags=TenantMetrics.tags(*key))
