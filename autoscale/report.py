"""Human-readable rendering of a plan: one table per deployment (number, value, why) and one for tenants."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from paliserve.spec import DeploymentPlan, Plan

from .units import human_bytes


def _rows(d: DeploymentPlan) -> list[tuple[str, str, str]]:
    e, r, kv, p = d.engine_args, d.reasons, d.kv_cache, d.predicted
    why = r.get
    return [
        ("replicas min/initial/max", f"{d.replicas.min}/{d.replicas.initial}/{d.replicas.max}",
         f"{why('replicas.initial', '')}; {why('replicas.max', '')}; {why('replicas.min', '')}"),
        ("gpus_per_replica", f"{d.gpus_per_replica:g}", why("gpus_per_replica", "")),
        ("tensor_parallel_size", str(e.tensor_parallel_size), why("engine_args.tensor_parallel_size", "")),
        ("gpu_memory_utilization", f"{e.gpu_memory_utilization:g}", why("engine_args.gpu_memory_utilization", "")),
        *([("VLLM_CPU_KVCACHE_SPACE", f"{d.env['VLLM_CPU_KVCACHE_SPACE']} GiB", why("env.VLLM_CPU_KVCACHE_SPACE", ""))]
          if "VLLM_CPU_KVCACHE_SPACE" in d.env else []),
        ("max_num_seqs", str(e.max_num_seqs), why("engine_args.max_num_seqs", "")),
        ("max_model_len", str(e.max_model_len), why("engine_args.max_model_len", "")),
        ("max_num_batched_tokens", str(e.max_num_batched_tokens), why("engine_args.max_num_batched_tokens", "")),
        ("dtype", e.dtype, why("engine_args.dtype", "")),
        ("image tokens", str(d.image_tokens), why("image_tokens", "")),
        ("weights", human_bytes(d.weights_bytes), why("weights_bytes", "")),
        ("KV bytes/token", f"{kv.bytes_per_token:,}", why("kv_cache.bytes_per_token", "")),
        ("KV tokens/replica", f"{kv.tokens_per_replica:,}", why("kv_cache.tokens_per_replica", "")),
        ("max_ongoing_requests", str(d.max_ongoing_requests), why("max_ongoing_requests", "")),
        ("target_ongoing_requests", f"{d.autoscaling.target_ongoing_requests:g}",
         why("autoscaling.target_ongoing_requests", "")),
        ("predicted", f"TTFT p95 {p.ttft_p95_ms:.0f} ms, TPOT {p.tpot_ms:.1f} ms, {p.tokens_per_s:.0f} tok/s",
         why("predicted", "")),
    ]


def deployment_table(d: DeploymentPlan) -> Table:
    where = f"{d.accelerator or d.device}" + (f", {len(d.tenants)} tenant(s)" if d.tenants else "")
    table = Table(title=f"deployment {d.name} ({d.model} on {where})", title_justify="left", show_lines=False)
    table.add_column("number", style="bold", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("why")
    for name, value, reason in _rows(d):
        table.add_row(name, value, reason)
    return table


def tenant_table(plan: Plan) -> Table:
    table = Table(title="tenants", title_justify="left")
    for column in ("tenant", "deployment", "concurrency", "TTFT p95 ms (SLO)", "TPOT ms (SLO)", "headroom ms"):
        table.add_column(column, no_wrap=True)
    for t in plan.tenants:
        w, slo = t.workload, t.slo
        table.add_row(
            t.name,
            t.deployment or "",
            str(w.concurrency) if w else "",
            f"{t.predicted_ttft_p95_ms:.0f} ({slo.ttft_p95_ms:g})" if slo else "",
            f"{t.predicted_tpot_ms:.1f} ({slo.tpot_p95_ms:g})" if slo else "",
            f"TTFT {t.headroom.ttft_ms:+.0f}, TPOT {t.headroom.tpot_ms:+.1f}",
        )
    return table


def summary(plan: Plan) -> Text:
    kinds: dict[str, int] = {}
    for gpu in plan.gpu_layout:
        kinds[gpu.type] = kinds.get(gpu.type, 0) + 1
    devices = ", ".join(f"{n} x {kind}" for kind, n in kinds.items()) or "none"
    cost = ""
    if plan.cost.per_hour_max is not None:
        cost = f"; cost ${plan.cost.per_hour_initial:.2f}/h initial, ${plan.cost.per_hour_max:.2f}/h at peak"
    lines = [f"devices at peak: {devices} ({plan.gpus_initial} at initial replicas){cost}"]
    lines += [f"- {reason}" for reason in plan.reasons]
    return Text("\n".join(lines))


def render(plan: Plan) -> Group:
    return Group(*(deployment_table(d) for d in plan.deployments), tenant_table(plan), summary(plan))
