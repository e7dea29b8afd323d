"""`paliserve profile-endpoint`: the serving path, measured through a live endpoint, added to a
calibration profile as serving points.

The engine's profile (`paliserve profile`) times vLLM alone. What a client waits for also holds
HTTP, the gateway, image preprocessing, streaming and the CPU these share with the engine. This
measures all of it the way the load test will: for each concurrency it runs `paliserve
loadtest`'s own Locust client (closed loop, steady shape) with one tenant of the plan held at that
concurrency, and keeps mean and p95 TTFT, mean TPOT and throughput. The sweep over the
concurrencies runs `passes` times and each point combines its passes, so that a minute in which
the machine was busy with something else weighs as one pass, not as the point. The planner adds
the difference between these and its engine model to its predictions (autoscale/performance.py).

It lives at the top of the package because it joins two rooms (the load test's runner and the
planner's profile), which do not import each other.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from autoscale.loading import dump_plan
from autoscale.profile import Profile, ServingPoint, ServingWorkload
from loadtests.runner import EXIT_INVALID, EXIT_NOT_RUN, Options, run
from paliserve.spec import Plan, TenantPlan


class EndpointProfileError(ValueError):
    """The plan, the profile or the endpoint cannot give serving points."""


def measure_serving(
    plan: Plan,
    profile: Profile,
    host: str,
    concurrencies: list[int],
    seconds: float,
    work: Path,
    keys: Path | None = None,
    tenant: str | None = None,
    say: Callable[[str], None] = print,
    passes: int = 2,
) -> Profile:
    """`profile` with its serving points replaced by ones measured through `host`, each the
    combination of `passes` sweeps over the concurrencies."""
    chosen = _tenant(plan, profile, tenant)
    deployment = next(d for d in plan.deployments if d.name == chosen.deployment)
    if (deployment.replicas.min, deployment.replicas.max) != (1, 1):
        raise EndpointProfileError(
            f"deployment {deployment.name} runs {deployment.replicas.min}..{deployment.replicas.max} replicas: serving "
            "points are per replica, so measure an endpoint serving a plan with exactly one replica"
        )
    if not concurrencies or min(concurrencies) < 1:
        raise EndpointProfileError(f"concurrencies must be positive integers, got {concurrencies}")
    if passes < 1:
        raise EndpointProfileError(f"passes must be at least 1, got {passes}")
    levels = sorted(set(concurrencies))
    measured: dict[int, list[ServingPoint]] = {c: [] for c in levels}
    for n in range(1, passes + 1):
        for c in levels:
            say(f"pass {n}/{passes}, concurrency {c}: {seconds:g} s of closed-loop load through {host}")
            measured[c].append(_point(plan, chosen, c, host, seconds, work / f"pass{n}" / f"c{c}", keys))
            say(f"pass {n}/{passes}, {_describe(measured[c][-1])}")
    points = [combine(measured[c]) for c in levels]
    if passes > 1:
        for p in points:
            say(f"combined, {_describe(p)}")
    w = chosen.workload
    workload = ServingWorkload(
        endpoint=host,
        prompt_tokens_mean=w.prompt_tokens.mean,
        prompt_tokens_p95=w.prompt_tokens.p95,
        output_tokens_mean=w.output_tokens.mean,
        seconds_per_point=seconds,
        passes=passes,
        measured_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return profile.model_copy(update={"serving": points, "serving_workload": workload})


def combine(passes: list[ServingPoint]) -> ServingPoint:
    """One serving point from passes of equal length at one concurrency: latencies averaged
    weighted by each pass's requests, rates averaged."""
    ok = sum(p.requests for p in passes)

    def weighted(field: str) -> float:
        return sum(getattr(p, field) * p.requests for p in passes) / ok

    return ServingPoint(
        concurrency=passes[0].concurrency,
        ttft_mean_seconds=weighted("ttft_mean_seconds"),
        ttft_p95_seconds=weighted("ttft_p95_seconds"),
        tpot_mean_seconds=weighted("tpot_mean_seconds"),
        requests_per_second=sum(p.requests_per_second for p in passes) / len(passes),
        output_tokens_per_second=sum(p.output_tokens_per_second for p in passes) / len(passes),
        requests=ok,
        failures=sum(p.failures for p in passes),
    )


def _describe(p: ServingPoint) -> str:
    return (
        f"concurrency {p.concurrency}: TTFT mean {p.ttft_mean_seconds * 1e3:.1f} ms p95 {p.ttft_p95_seconds * 1e3:.1f} ms, "
        f"TPOT {p.tpot_mean_seconds * 1e3:.2f} ms, {p.requests_per_second:.2f} req/s, "
        f"{p.output_tokens_per_second:.0f} tok/s ({p.requests} requests, {p.failures} failed)"
    )


def _tenant(plan: Plan, profile: Profile, name: str | None) -> TenantPlan:
    """The tenant whose requests are sent: the one named, else the first with a workload on the
    deployment of the profile's model."""
    served = {d.name for d in plan.deployments if profile.model in (d.model, d.model_name)}
    if not served:
        raise EndpointProfileError(f"no deployment of the plan serves the profile's model {profile.model!r}")
    candidates = [t for t in plan.tenants if t.workload is not None and t.slo is not None and t.deployment in served]
    if name is not None:
        candidates = [t for t in candidates if t.name == name]
    if not candidates:
        which = f"tenant {name!r}" if name else "a tenant"
        raise EndpointProfileError(f"the plan has no {which} with a workload and an SLO on model {profile.model!r}")
    return candidates[0]


def _point(plan, tenant, concurrency, host, seconds, out: Path, keys) -> ServingPoint:
    workload = tenant.workload.model_copy(update={"concurrency": concurrency, "peak_concurrency": concurrency,
                                                  "baseline_concurrency": None, "request_rate": None})  # fmt: skip
    one = plan.model_copy(update={"tenants": [tenant.model_copy(update={"workload": workload})]})
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.yaml"
    plan_file.write_text(dump_plan(one))
    quiet = lambda line: None  # noqa: E731 (the per-point report is in `out`; progress would drown the table)
    code = run(Options(plan=plan_file, host=host, duration_s=seconds, report=out, keys=keys), say=quiet)
    if code in (EXIT_INVALID, EXIT_NOT_RUN):
        raise EndpointProfileError(f"the load test at concurrency {concurrency} could not run; see {out / 'locust.log'}")
    at = json.loads((out / "summary.json").read_text())["tenants"][tenant.name]["at_target"]
    ok = at["requests"] - at["failures"]
    if ok < 1 or at["ttft_ms"]["p95"] is None or at["tpot_ms"]["mean"] is None:
        raise EndpointProfileError(f"no successful streamed request at concurrency {concurrency}; see {out}")
    return ServingPoint(
        concurrency=concurrency,
        ttft_mean_seconds=at["ttft_ms"]["mean"] / 1e3,
        ttft_p95_seconds=at["ttft_ms"]["p95"] / 1e3,
        tpot_mean_seconds=at["tpot_ms"]["mean"] / 1e3,
        requests_per_second=at["requests_per_s"] or 0.0,
        output_tokens_per_second=at["output_tokens_per_s"] or 0.0,
        requests=ok,
        failures=at["failures"],
    )
