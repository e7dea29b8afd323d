"""Plans for load-test tests: the shared stack's tiny plan plus tenants with workloads."""

from __future__ import annotations

from pathlib import Path

from paliserve.local import TINY_MODEL_NAME, tiny_plan
from paliserve.spec import Plan, Slo, TenantPlan, Workload

MAX_MODEL_LEN = 2048  # as tests/conftest.py starts the stack


def tenant(name: str, ttft_ms: float, tpot_ms: float, concurrency: int = 2, peak: int | None = None,
           request_rate: float | None = None, output: float = 8, keys: list[str] | None = None,
           predicted_ttft_ms: float = 100.0, predicted_tpot_ms: float = 10.0) -> TenantPlan:  # fmt: skip
    return TenantPlan(
        name=name,
        api_key_sha256=keys or [],
        models=[TINY_MODEL_NAME],
        workload=Workload(
            concurrency=concurrency,
            peak_concurrency=peak,
            request_rate=request_rate,
            prompt_tokens={"mean": 6, "p95": 10},
            output_tokens={"mean": output, "p95": output * 1.5},
        ),
        slo=Slo(ttft_p95_ms=ttft_ms, tpot_p95_ms=tpot_ms),
        deployment="tiny-paligemma",
        predicted_ttft_p95_ms=predicted_ttft_ms,
        predicted_tpot_ms=predicted_tpot_ms,
    )


def plan_with(model_dir: str | Path, *tenants: TenantPlan) -> Plan:
    plan = tiny_plan(model_dir, max_model_len=MAX_MODEL_LEN)
    plan.deployments[0].tenants = [t.name for t in tenants]
    plan.deployments[0].predicted.tokens_per_s = 500.0
    plan.deployments[0].predicted.max_concurrency = 64
    plan.deployments[0].predicted.requests_per_s = 40.0
    return plan.model_copy(update={"tenants": list(tenants)})
