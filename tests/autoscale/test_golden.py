"""Golden numbers from hand arithmetic (FACTS.md figures)."""

import pytest

from autoscale.catalog import architecture_of, model_from_id
from autoscale.memory import kv_bytes_for_request, kv_bytes_per_token, param_counts, weight_bytes
from autoscale.planner import plan
from planspecs import LOCAL_CPU, one_tenant

GIB = 2**30


@pytest.mark.parametrize(
    "model_id, kv_bytes",
    [
        ("paligemma-3b-pt-224", 18_432),  # 2 x 18 layers x 1 KV head x 256 x 2 bytes
        ("paligemma2-3b-pt-448", 106_496),  # 2 x 26 x 4 x 256 x 2
        ("paligemma2-10b-pt-224", 344_064),  # 2 x 42 x 8 x 256 x 2
        ("paligemma2-28b-pt-896", 376_832),  # 2 x 46 x 16 x 128 x 2
    ],
)
def test_kv_bytes_per_token(model_id, kv_bytes):
    assert kv_bytes_per_token(architecture_of(model_from_id(model_id)).text, 2) == kv_bytes


@pytest.mark.parametrize("resolution, tokens", [(224, 256), (448, 1024), (896, 4096)])
def test_image_tokens(resolution, tokens):
    assert architecture_of(model_from_id(f"paligemma2-3b-pt-{resolution}")).vision.image_tokens == tokens


def test_paligemma1_weight_bytes_by_hand():
    # decoder matrices: 18 x (2048 x (2048 + 2 x 256) + 2048 x 2048 + 3 x 2048 x 16384) = 1,981,808,640
    # embedding + norms: 257216 x 2048 + 18 x 2 x 2048 + 2048 = 526,854,144
    # SigLIP: 27 x 15,239,504 + patch 678,528 + positions 256 x 1152 + post-norm 2304 = 412,442,352
    # projector: 1152 x 2048 + 2048 = 2,361,344
    arch = architecture_of(model_from_id("paligemma-3b-pt-224"))
    counts = param_counts(arch)
    assert counts.text_linear == 1_981_808_640
    assert counts.text_other == 526_854_144
    assert counts.vision == 412_442_352
    assert counts.projector == 2_361_344
    assert weight_bytes(arch, "bfloat16") == 2 * 2_923_466_480
    # int8 decoder matrices: 1 byte each, the rest stays bf16
    assert weight_bytes(arch, "bfloat16", "int8") == 1_981_808_640 + 2 * (2_923_466_480 - 1_981_808_640)


@pytest.mark.parametrize(
    "model_id, billions", [("paligemma2-3b-pt-224", 3.03), ("paligemma2-10b-pt-224", 9.66), ("paligemma2-28b-pt-224", 27.65)]
)
def test_paligemma2_parameter_counts(model_id, billions):
    assert param_counts(architecture_of(model_from_id(model_id))).total / 1e9 == pytest.approx(billions, rel=0.005)


def test_sliding_window_caps_kv_of_long_requests():
    text = architecture_of(model_from_id("paligemma2-3b-pt-896")).text
    per_layer = 2 * 4 * 256 * 2
    # 6000 tokens: 13 full layers keep 6000, 13 sliding layers keep 4096 + one block
    assert kv_bytes_for_request(text, 6000, 2, 16) == per_layer * (13 * 6000 + 13 * (4096 + 16))
    # short requests are rounded up to whole blocks on every layer
    assert kv_bytes_for_request(text, 1000, 2, 16) == per_layer * 26 * 1008


def _fixed_gpu_bytes(weights, hidden, intermediate, vocab, seqs, batched=2048):
    activation = batched * (2 * intermediate + 4 * hidden) * 2 + 2 * seqs * vocab * 4
    encoder = batched * hidden * 2
    return weights + activation + encoder + GIB // 2 + GIB  # + CUDA graphs + runtime


@pytest.mark.parametrize(
    "model_id, gpu, memory, kv_per_token",
    [
        ("paligemma-3b-mix-224", "L4", 24e9, 18_432),
        ("paligemma2-3b-pt-448", "H100-SXM", 80e9, 106_496),
        ("paligemma2-10b-pt-224", "A100-80GB", 80e9, 344_064),
    ],
)
def test_kv_tokens_per_replica(model_id, gpu, memory, kv_per_token):
    result = plan(one_tenant(model_id, gpu=gpu, concurrency=4, ttft=20_000, tpot=1000))
    d = result.deployments[0]
    arch = architecture_of(model_from_id(model_id))
    t = arch.text
    # light load: the replica may take 1/2, 1/4 or 1/8 of the GPU; its share of the 92% is its budget
    share = d.gpus_per_replica
    assert share in (1, 0.5, 0.25, 0.125)
    utilization = int(share * 92) / 100
    assert d.engine_args.gpu_memory_utilization == utilization
    assert d.weights_bytes == weight_bytes(arch, "bfloat16")
    fixed = _fixed_gpu_bytes(d.weights_bytes, t.hidden_size, t.intermediate_size, t.vocab_size,
                             d.engine_args.max_num_seqs, d.engine_args.max_num_batched_tokens)
    assert d.kv_cache.bytes_per_token == kv_per_token
    # vLLM allocates whole blocks, of 16 tokens on GPUs
    assert d.kv_cache.block_size == 16
    assert d.kv_cache.blocks_per_replica == (int(utilization * memory) - fixed) // (kv_per_token * 16)
    assert d.kv_cache.tokens_per_replica == d.kv_cache.blocks_per_replica * 16


def test_tiny_cpu_plan_by_hand(tmp_path, monkeypatch):
    from autoscale.loading import load_spec

    monkeypatch.setenv("PALISERVE_TINY_MODEL", str(tmp_path))
    d = plan(load_spec(str(LOCAL_CPU))).deployments[0]
    assert d.image_tokens == 4  # (28 / 14)^2
    assert d.kv_cache.bytes_per_token == 2 * 2 * 1 * 32 * 4  # K,V x layers x KV heads x head_dim x fp32
    assert d.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert d.kv_cache.block_size == 128  # vLLM's on CPUs
    assert d.kv_cache.tokens_per_replica == GIB // (512 * 128) * 128
    assert d.engine_args.dtype == "float32" and d.engine_args.enforce_eager
    assert d.engine_args.gpu_memory_utilization == 0.3
    assert d.replicas.model_dump() == {"min": 1, "initial": 1, "max": 1}
    assert d.ray_actor_options.num_gpus == 0 and d.device == "cpu"
