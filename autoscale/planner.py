"""The planner: a cluster spec (and optional measured profiles) in, a Plan out. Pure: no I/O, no Ray.

For each model it sizes a deployment on every accelerator kind of the pool (autoscale/sizing.py),
ranks them (cost per hour when the pool has prices, else devices), then assigns deployments
largest first to the best kind with room left, and lays the replicas out on devices.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace


from paliserve.spec import (
    ActorResources,
    AdapterPlan,
    AutoscalingPolicyRef,
    AutoscalingTargets,
    ClusterSpec,
    Cost,
    DeploymentPlan,
    EngineArgs,
    GpuLayout,
    Headroom,
    Plan,
    Predicted,
    ReplicaBounds,
    TenantPlan,
)

from .catalog import GPU_CATALOG, Accelerator, HostFigures, accelerator_of
from .demand import Demand, demands
from .errors import InfeasiblePlan
from .placement import ReplicaGroup, place
from .policy_plan import prometheus_policy
from .profile import Profile
from .sizing import Sizing, size_deployment

LIMIT_ORDER = ("max_model_len", "ttft_slo", "tpot_slo", "memory", "pool")


class SpecError(ValueError):
    """The spec is valid YAML but names something the planner cannot resolve; names the field."""


def plan(spec: ClusterSpec, profiles: Sequence[tuple[Profile, str]] = (), host: HostFigures | None = None) -> Plan:
    """Plan `spec`. `profiles` are (profile, label) pairs; a profile applies to the deployment of
    the same model on the same accelerator kind. `host`: this machine's measured speed, for a
    `cpu` pool entry that gives no figures of its own."""
    pool = _resolve_pool(spec, host)
    needs = demands(spec)
    ranked = {d.model.name: _ranked_sizings(d, pool, spec, profiles) for d in needs}
    chosen = _assign(needs, ranked, pool)
    deployments = [_deployment(d, chosen[d.model.name], spec) for d in needs]
    layout, per_type = _layout(chosen, pool, initial=False)
    _, per_type_initial = _layout(chosen, pool, initial=True)
    return Plan(
        deployments=deployments,
        tenants=_tenants(spec, chosen, deployments),
        gpus=len(layout),
        gpus_initial=sum(per_type_initial.values()),
        gpu_layout=layout,
        cost=Cost(
            per_hour_initial=_cost(per_type_initial, pool),
            per_hour_max=_cost(per_type, pool),
            per_device_hour={n: pool[n].cost_per_hour for n, k in per_type.items() if k and pool[n].cost_per_hour is not None},
        ),
        http=spec.http,
        gateway=spec.gateway,
        reasons=_plan_reasons(needs, chosen, ranked, profiles),
    )


def deployment_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", model_name)


# --- choosing an accelerator per deployment ---------------------------------------------


def _resolve_pool(spec: ClusterSpec, host: HostFigures | None = None) -> dict[str, Accelerator]:
    pool = {}
    for i, gpu in enumerate(spec.gpus):
        try:
            accel = accelerator_of(gpu, f"gpus[{i}]", host)
        except ValueError as error:
            raise SpecError(str(error)) from None
        pool[accel.name] = accel
    return pool


def _profile_for(demand: Demand, accel: Accelerator, profiles) -> tuple[Profile, str] | None:
    return next(
        ((p, label) for p, label in profiles
         if p.model == demand.model.name and p.accelerator.lower() == accel.name.lower()),
        None,
    )


def _rank_key(sizing: Sizing, priced: bool) -> tuple:
    devices = sizing.device_equivalents
    cost = devices * (sizing.accelerator.cost_per_hour or 0.0) if priced else 0.0
    ttft = sizing.perf.ttft_p95_s(sizing.planned_batch, sizing.load, sizing.load.prompt_mean)
    return (cost, devices, ttft, sizing.accelerator.name)


def _ranked_sizings(demand: Demand, pool: dict[str, Accelerator], spec: ClusterSpec, profiles) -> list[Sizing]:
    sizings, failures = [], []
    for accel in pool.values():
        try:
            sizings.append(size_deployment(demand, accel, spec.planner, _profile_for(demand, accel, profiles)))
        except InfeasiblePlan as error:
            failures.append((accel, error))
    if not sizings:
        raise _no_accelerator_fits(demand, failures, spec)
    priced = all(a.cost_per_hour is not None for a in pool.values())
    return sorted(sizings, key=lambda s: _rank_key(s, priced))


def _no_accelerator_fits(demand: Demand, failures, spec: ClusterSpec) -> InfeasiblePlan:
    failures.sort(key=lambda f: LIMIT_ORDER.index(f[1].limit))
    accel, first = failures[0]
    if first.limit == "max_model_len":
        return first
    detail = "; ".join(f"on {a.name}: {e.detail}" for a, e in failures)
    change = first.change
    alternative = _catalog_alternative(demand, spec, exclude={a.name for a, _ in failures})
    if alternative:
        change += f"; or add {alternative} to the pool"
    return InfeasiblePlan(first.limit, detail, change)


def _catalog_alternative(demand: Demand, spec: ClusterSpec, exclude: set[str]) -> str | None:
    """The catalog GPU outside the pool that serves this demand with the fewest devices."""
    best = None
    for accel in GPU_CATALOG.values():
        if accel.name in exclude or accel.device != "gpu":
            continue
        try:
            sizing = size_deployment(demand, accel, spec.planner)
        except InfeasiblePlan:
            continue
        if best is None or sizing.device_equivalents < best.device_equivalents:
            best = sizing
    if best is None:
        return None
    return f"{best.accelerator.name} ({best.device_equivalents:g} devices at peak)"


def _assign(needs: list[Demand], ranked: dict[str, list[Sizing]], pool: dict[str, Accelerator]) -> dict[str, Sizing]:
    """Largest deployments first, each to the accelerator kind with room that adds the least
    (whole devices, priced when the pool has prices); ties go to the better-ranked kind."""
    chosen: dict[str, Sizing] = {}
    order = sorted(needs, key=lambda d: -ranked[d.model.name][0].device_equivalents)
    for demand in order:
        name = demand.model.name
        before = _footprint(chosen, pool)
        best, best_added = None, None
        for sizing in ranked[name]:
            trial = chosen | {name: sizing}
            _, per_type = _layout(trial, pool, initial=False)
            if per_type[sizing.accelerator.name] > sizing.accelerator.count:
                continue
            added = _footprint(trial, pool) - before
            if best_added is None or added < best_added - 1e-9:
                best, best_added = sizing, added
        if best is None:
            raise _pool_too_small(demand, ranked[name][0], chosen, pool)
        chosen[name] = best
    return chosen


def _footprint(chosen: dict[str, Sizing], pool: dict[str, Accelerator]) -> float:
    """$/h of the whole devices the deployments occupy, or their count when the pool has no prices."""
    _, per_type = _layout(chosen, pool, initial=False)
    priced = all(a.cost_per_hour is not None for a in pool.values())
    return sum(n * (pool[name].cost_per_hour if priced else 1.0) for name, n in per_type.items())


def _pool_too_small(demand: Demand, best: Sizing, chosen: dict[str, Sizing], pool) -> InfeasiblePlan:
    accel = best.accelerator
    _, per_type = _layout(chosen | {demand.model.name: best}, pool, initial=False)
    needed = per_type[accel.name]
    fit = 0
    for replicas in range(best.replicas.max - 1, 0, -1):
        shrunk = _with_max(best, replicas)
        _, trial = _layout(chosen | {demand.model.name: shrunk}, pool, initial=False)
        if trial[accel.name] <= accel.count:
            fit = replicas
            break
    detail = (
        f"model {demand.model.name} needs {best.replicas.max} replicas x {best.gpus_per_replica:g} {accel.name} "
        f"at peak ({best.max_batch} requests each); with the other deployments that is {needed} x {accel.name}, "
        f"the pool has {accel.count}"
    )
    change = f"raise the {accel.name} count to {needed} (+{needed - accel.count})"
    if fit:
        change += (
            f", or lower the peak concurrency on {demand.model.name} from {best.replicas.max * best.max_batch} "
            f"to at most {fit * best.max_batch}"
        )
    return InfeasiblePlan("pool", detail, change)


def _with_max(sizing: Sizing, replicas: int) -> Sizing:
    bounds = ReplicaBounds(
        min=min(sizing.replicas.min, replicas), initial=min(sizing.replicas.initial, replicas), max=replicas
    )
    return replace(sizing, replicas=bounds)


# --- layout and cost ----------------------------------------------------------------------


def _layout(chosen: dict[str, Sizing], pool: dict[str, Accelerator], initial: bool) -> tuple[list[GpuLayout], dict[str, int]]:
    layout: list[GpuLayout] = []
    per_type = {name: 0 for name in pool}
    for accel in pool.values():
        groups = [
            ReplicaGroup(
                deployment=deployment_name(model),
                count=s.replicas.initial if initial else s.replicas.max,
                share=s.share, tp=s.tp, memory_utilization=s.gpu_memory_utilization,
            )
            for model, s in chosen.items()
            if s.accelerator.name == accel.name
        ]
        devices = place(groups, accel.name, accel.per_node)
        per_type[accel.name] = len(devices)
        offset = len(layout)
        layout += [d.model_copy(update={"index": d.index + offset}) for d in devices]
    return layout, per_type


def _cost(per_type: dict[str, int], pool: dict[str, Accelerator]) -> float | None:
    used = {name: n for name, n in per_type.items() if n}
    if any(pool[name].cost_per_hour is None for name in used):
        return None
    return round(sum(n * pool[name].cost_per_hour for name, n in used.items()), 4)


# --- assembling the plan ------------------------------------------------------------------


def _policy(demand: Demand, s: Sizing, spec: ClusterSpec) -> AutoscalingPolicyRef | None:
    """The Prometheus-driven policy where there is something to scale (max > min replicas)."""
    options = spec.planner.prometheus_policy
    if options is None or s.replicas.max <= s.replicas.min:
        return None
    ttft_slos = [t.slo.ttft_p95_ms for t in demand.tenants if t.slo is not None]
    return prometheus_policy(
        deployment_name(demand.model.name),
        demand.model.name,
        s.replicas,
        target_ongoing_requests=s.max_batch,
        ttft_slo_ms=min(ttft_slos) if ttft_slos else None,
        options=options,
    )


def _deployment(demand: Demand, s: Sizing, spec: ClusterSpec) -> DeploymentPlan:
    model = demand.model
    cpu = s.accelerator.device == "cpu"
    adapters = [AdapterPlan(name=a.name, path=a.path, tenant=a.tenant, rank=a.rank) for a in model.adapters]
    engine = EngineArgs(
        model=model.checkpoint_or_default,
        served_model_name=model.name,
        dtype=s.dtype,
        max_model_len=s.max_model_len,
        max_num_seqs=s.max_batch,
        max_num_batched_tokens=s.max_num_batched_tokens,
        block_size=spec.planner.block_size,
        gpu_memory_utilization=s.gpu_memory_utilization,
        tensor_parallel_size=s.tp,
        enforce_eager=cpu,
        enable_lora=bool(adapters),
        max_loras=s.max_loras,
        max_lora_rank=s.max_lora_rank,
        max_cpu_loras=len(adapters) if len(adapters) > s.max_loras else None,
        quantization="fp8" if model.quantization == "fp8" else None,
    )
    batch = s.planned_batch
    worst_ttft = max(
        s.perf.ttft_p95_s(batch, s.load, t.prompt.p95) for t in demand.tenants
    )
    reasons = dict(s.reasons)
    reasons["engine_args.enforce_eager"] = (
        "vLLM on CPUs runs eagerly" if cpu else "CUDA graphs on: faster decode steps"
    )
    reasons["predicted"] = _predicted_reason(s, batch)
    return DeploymentPlan(
        name=deployment_name(model.name),
        model=model.name,
        engine_args=engine,
        replicas=s.replicas,
        ray_actor_options=ActorResources(
            num_cpus=1.0,
            num_gpus=0.0 if cpu else s.gpus_per_replica,
            accelerator_type=None if cpu else s.accelerator.ray_accelerator_type,
        ),
        max_ongoing_requests=s.max_batch,
        env={"VLLM_CPU_KVCACHE_SPACE": str(s.kv_cache_gib)} if cpu else {},
        device="cpu" if cpu else "gpu",
        accelerator=s.accelerator.name,
        gpus_per_replica=0.0 if cpu else s.gpus_per_replica,
        image_tokens=demand.image_tokens,
        weights_bytes=s.weights,
        kv_cache=s.kv,
        memory=s.memory,
        predicted=Predicted(
            ttft_p95_ms=round(worst_ttft * 1e3, 2),
            ttft_mean_ms=round(s.perf.ttft_mean_s(batch, s.load) * 1e3, 2),
            tpot_ms=round(s.perf.tpot_s(batch, s.load) * 1e3, 2),
            tokens_per_s=round(s.perf.tokens_per_s(batch, s.load), 1),
            max_concurrency=s.max_batch,
            requests_per_s=round(s.perf.requests_per_s(s.max_batch, s.load), 3),
        ),
        autoscaling=AutoscalingTargets(
            target_ongoing_requests=s.max_batch,
            upscale_delay_s=spec.planner.upscale_delay_s,
            downscale_delay_s=spec.planner.downscale_delay_s,
            policy=_policy(demand, s, spec),
        ),
        adapters=adapters,
        tenants=[t.name for t in demand.tenants if t.slo is not None],
        calibration=s.calibration,
        reasons=reasons,
    )


def _tenants(spec: ClusterSpec, chosen: dict[str, Sizing], deployments: list[DeploymentPlan]) -> list[TenantPlan]:
    result = []
    for tenant in spec.tenants:
        s = chosen[tenant.workload_model]
        batch = s.planned_batch
        ttft = s.perf.ttft_p95_s(batch, s.load, tenant.workload.prompt_tokens.p95) * 1e3
        tpot = s.perf.tpot_s(batch, s.load) * 1e3
        result.append(
            TenantPlan(
                name=tenant.name,
                api_key_sha256=tenant.api_key_sha256,
                models=tenant.models,
                adapters=tenant.adapters,
                weight=tenant.weight,
                limits=tenant.limits,
                workload=tenant.workload,
                slo=tenant.slo,
                deployment=deployment_name(tenant.workload_model),
                predicted_ttft_p95_ms=round(ttft, 2),
                predicted_tpot_ms=round(tpot, 2),
                headroom=Headroom(
                    ttft_ms=round(tenant.slo.ttft_p95_ms - ttft, 2),
                    tpot_ms=round(tenant.slo.tpot_p95_ms - tpot, 2),
                ),
            )
        )
    return result


def _predicted_reason(s: Sizing, batch: int) -> str:
    perf, load = s.perf, s.load
    parts = [f"at the planned {batch} requests per replica (target concurrency over initial replicas); {s.calibration}"]
    if perf.serving_measured:
        points = ", ".join(str(p.concurrency) for p in perf.profile.serving)
        parts.append(
            f"plus the serving path measured through {perf.profile.serving_workload.endpoint or 'the endpoint'} at "
            f"concurrency {points}: at {batch} it adds {perf.path_s('ttft_p95', batch) * 1e3:.1f} ms to TTFT p95 and "
            f"{perf.path_s('tpot', batch) * 1e3:.2f} ms to TPOT"
        )
    elif perf.profile is not None:
        parts.append("the engine alone (the profile has no serving points: HTTP, gateway and streaming are left out)")
    parts.append(
        f"throughput {batch} in flight / E2E {perf.e2e_s(batch, load) * 1e3:.0f} ms (mean TTFT + "
        f"{max(load.output_mean - 1, 0):g} x TPOT) = {perf.requests_per_s(batch, load):.2f} requests/s"
    )
    return "; ".join(parts)


def _plan_reasons(needs, chosen, ranked, profiles) -> list[str]:
    reasons = []
    for demand in needs:
        s = chosen[demand.model.name]
        others = [r for r in ranked[demand.model.name] if r is not s]
        why = f"{demand.model.name} on {s.accelerator.name}: {s.device_equivalents:g} device(s) at peak"
        if s.accelerator.cost_per_hour is not None:
            why += f", ${s.device_equivalents * s.accelerator.cost_per_hour:.2f}/h"
        if others:
            why += "; alternatives: " + ", ".join(f"{o.accelerator.name} {o.device_equivalents:g}" for o in others)
        if s is not ranked[demand.model.name][0]:
            why += " (least added to the devices already in use, or the better kind is full)"
        reasons.append(why)
        if not any(t.slo for t in demand.tenants):
            reasons.append(f"{demand.model.name}: no tenant workload targets it; one replica for allowed callers")
        reasons.append(f"{demand.model.name}: calibration: {s.calibration}")
    used = {(s.accelerator.name.lower(), m) for m, s in chosen.items()}
    for profile, label in profiles:
        if (profile.accelerator.lower(), profile.model) not in used:
            reasons.append(f"{label}: matches no deployment (model {profile.model} on {profile.accelerator})")
    return reasons
