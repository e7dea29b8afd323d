"""Random-weight checkpoints with the exact architecture of a catalog PaliGemma, fully offline.

`paliserve random-checkpoint paligemma-3b-pt-224 DIR` writes what a hub download holds, with
random weights: config.json (`architectures: ["PaliGemmaForConditionalGeneration"]`, the real
image size and image-token count), sharded safetensors with `model.safetensors.index.json`
under the hub's key names (`language_model.model.*`, `vision_tower.vision_model.*`,
`multi_modal_projector.linear.*`; the LM head is tied to the embedding and not stored), and the
processor and a tokenizer with the real layout: 256,000 text ids, `<loc0000>`..`<loc1023>` at
256000..257023, `<seg000>`..`<seg127>` at 257024..257151, `<image>` at 257152, an embedding
of 257,216 rows.

Memory-bounded: the tensor list comes from transformers' own model built on the meta device
(no memory), and each tensor is generated in chunks and streamed to its shard, so the peak RSS
is the interpreter plus one chunk, whatever the checkpoint's size. Deterministic: every tensor
draws from a generator seeded by (seed, key), so the bytes do not depend on order or sharding.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from paliserve.spec import Architecture

ARCHITECTURE_NAME = "PaliGemmaForConditionalGeneration"
TEXT_IDS = 256_000  # Gemma's sentencepiece vocabulary
LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = TEXT_IDS + len(LOC_TOKENS) + len(SEG_TOKENS)  # 257152, as in the hub's configs
MARKER_FILE = "paliserve-random.json"
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
DEFAULT_SHARD_BYTES = 2 * 10**9
CHUNK_ELEMENTS = 1 << 24  # values generated at a time: 64 MiB in float32
STD = 0.02
# Gemma 2 scales queries by 1/sqrt(query_pre_attn_scalar): head_dim, except Gemma2-27B's 144
# (hidden / heads). Keyed by hidden size; shapes do not depend on it.
QUERY_PRE_ATTN_SCALAR = {4608: 144}


@dataclass(frozen=True)
class TensorSpec:
    key: str  # the hub's name
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def catalog_architecture(model_id: str) -> Architecture:
    """The architecture of a catalog id (`paligemma-3b-pt-224`, `google/paligemma2-10b-mix-448`)."""
    from autoscale.catalog import architecture_of, model_from_id

    return architecture_of(model_from_id(model_id))


def real_vocab() -> dict[str, int]:
    """Token -> id with the hub tokenizer's layout of special ids (pad 0, eos 1, bos 2, unk 3, ...)."""
    from paliserve.tiny_model import _base_vocab

    return _base_vocab(TEXT_IDS, tail=[*LOC_TOKENS, *SEG_TOKENS, IMAGE_TOKEN])


def build_processor(arch: Architecture):
    from paliserve.tiny_model import _build_processor

    processor = _build_processor(arch.vision.image_size, arch.vision.image_tokens, vocab=real_vocab())
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids([IMAGE_TOKEN, LOC_TOKENS[0], SEG_TOKENS[-1]])
    if ids != [IMAGE_TOKEN_ID, TEXT_IDS, IMAGE_TOKEN_ID - 1] or len(tok) != IMAGE_TOKEN_ID + 1:
        raise RuntimeError(f"tokenizer layout is off: {len(tok)} tokens, <image>/<loc0000>/<seg127> at {ids}")
    return processor


def build_config(arch: Architecture, tokenizer=None, dtype: str = "bfloat16"):
    """transformers' PaliGemmaConfig for `arch` (Gemma 2 decoder when it has a sliding window)."""
    from transformers import Gemma2Config, GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    t, v = arch.text, arch.vision
    if arch.text.vocab_size <= IMAGE_TOKEN_ID:
        raise ValueError(f"vocab_size {t.vocab_size} does not hold <image> at {IMAGE_TOKEN_ID}")
    special = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if tokenizer is not None:
        special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    common = dict(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
        head_dim=t.head_dim, max_position_embeddings=t.max_position_embeddings,
        hidden_activation="gelu_pytorch_tanh", **special,
    )  # fmt: skip
    if t.sliding_window:
        text = Gemma2Config(
            sliding_window=t.sliding_window,
            query_pre_attn_scalar=QUERY_PRE_ATTN_SCALAR.get(t.hidden_size, t.head_dim),
            **common,
        )
    else:
        text = GemmaConfig(**common)
    vision = SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
        projection_dim=t.hidden_size, vision_use_head=False,
    )  # fmt: skip
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=IMAGE_TOKEN_ID,
        projection_dim=t.hidden_size,
        hidden_size=t.hidden_size,
        vocab_size=t.vocab_size,
        **special,
    )
    config.vision_config.num_image_tokens = v.image_tokens
    config.text_config.num_image_tokens = v.image_tokens
    config.architectures = [ARCHITECTURE_NAME]
    config.dtype = dtype
    return config


def hub_checkpoint_key(key: str) -> str:
    """transformers 5's state-dict name -> the name in the hub's PaliGemma checkpoints."""
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model.") :]
    if key.startswith("model.vision_tower."):
        rest = key[len("model.vision_tower.") :]
        return "vision_tower." + (rest if rest.startswith("vision_model.") else "vision_model." + rest)
    if key.startswith("model.multi_modal_projector."):
        return "multi_modal_projector." + key[len("model.multi_modal_projector.") :]
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    return key


def meta_model(config):
    """transformers' own PaliGemmaForConditionalGeneration for `config`, on the meta device."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    with torch.device("meta"):
        return PaliGemmaForConditionalGeneration(config)


def tensor_specs(config) -> list[TensorSpec]:
    """Every stored tensor (hub names, sorted), from transformers' model on the meta device; the
    tied LM head is left out, as the hub's checkpoints do."""
    model = meta_model(config)
    tied = set((getattr(model, "_tied_weights_keys", None) or {}))
    specs = [
        TensorSpec(hub_checkpoint_key(k), tuple(v.shape))
        for k, v in model.state_dict().items()
        if k not in tied
    ]
    return sorted(specs, key=lambda s: s.key)


def _init_kind(key: str) -> str:
    """normal for matrices; ones for SigLIP's LayerNorm scales; zeros for biases and Gemma's
    RMSNorm (it scales by 1 + weight)."""
    if key.endswith(".bias"):
        return "zeros"
    if "norm" in key and key.endswith(".weight"):
        return "ones" if key.startswith("vision_tower.") else "zeros"
    return "normal"


def _seed_of(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def tensor_chunks(spec: TensorSpec, dtype: str, seed: int):
    """The tensor's values as contiguous chunks of whole rows (flattened), in order."""
    import torch

    torch_dtype = getattr(torch, dtype)
    kind = _init_kind(spec.key)
    row = 1
    for d in spec.shape[1:]:
        row *= d
    rows = spec.shape[0] if spec.shape else 1
    per_chunk = max(1, CHUNK_ELEMENTS // max(row, 1))
    gen = torch.Generator().manual_seed(_seed_of(seed, spec.key))
    for start in range(0, rows, per_chunk):
        n = min(per_chunk, rows - start) * row
        if kind == "normal":
            chunk = torch.randn(n, generator=gen, dtype=torch.float32).mul_(STD).to(torch_dtype)
        elif kind == "ones":
            chunk = torch.ones(n, dtype=torch_dtype)
        else:
            chunk = torch.zeros(n, dtype=torch_dtype)
        yield chunk


def plan_shards(specs: list[TensorSpec], dtype_bytes: int, max_shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        nbytes = spec.numel * dtype_bytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def _write_shard(path: Path, specs: list[TensorSpec], dtype: str, seed: int) -> int:
    """Stream one safetensors file: header from the shapes, then each tensor chunk by chunk."""
    import torch

    dtype_bytes = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        nbytes = spec.numel * dtype_bytes
        header[spec.key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(spec.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            for chunk in tensor_chunks(spec, dtype, seed):
                f.write(chunk.view(torch.uint8).numpy())
    tmp.replace(path)
    return offset


def write_random_checkpoint(
    model: str | Architecture,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    seed: int = 0,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    say=None,
) -> Path:
    """Write a deterministic random-weight checkpoint of `model` (a catalog id or an
    Architecture) to `out_dir` and return the path."""
    import time

    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(SAFETENSORS_DTYPES)}")
    arch = catalog_architecture(model) if isinstance(model, str) else model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(arch)
    config = build_config(arch, processor.tokenizer, dtype)
    specs = tensor_specs(config)
    dtype_bytes = {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]
    shards = plan_shards(specs, dtype_bytes, max_shard_bytes)
    (out / MARKER_FILE).unlink(missing_ok=True)
    for old in out.glob("model*.safetensors"):
        old.unlink()
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        started = time.monotonic()
        total += _write_shard(out / name, shard, dtype, seed)
        weight_map.update({s.key: name for s in shard})
        if say:
            say(f"{name}: {len(shard)} tensors in {time.monotonic() - started:.1f} s")
    index = {"metadata": {"total_size": total, "total_parameters": sum(s.numel for s in specs)}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config.to_json_file(out / "config.json")
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id, do_sample=False).save_pretrained(out)  # fmt: skip
    processor.save_pretrained(out)
    marker = {"model": model if isinstance(model, str) else None, "seed": seed, "dtype": dtype,
              "parameters": index["metadata"]["total_parameters"], "bytes": total}  # fmt: skip
    (out / MARKER_FILE).write_text(json.dumps(marker) + "\n")
    return out
