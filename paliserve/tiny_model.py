"""Build a tiny random-weight PaliGemma checkpoint fully offline.

The checkpoint has the real architecture (SigLIP vision tower, projector, Gemma decoder) and
the real processor and tokenizer special tokens (`<image>`, `<loc0000>`..`<loc1023>`,
`<seg000>`..`<seg127>`), at a size that runs in milliseconds on a CPU. Both transformers and
vLLM load it; weights are written under the hub's key names, which vLLM requires.
"""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path

IMAGE_SIZE = 28
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
TEXT_VOCAB_SIZE = 2048
MAX_POSITION_EMBEDDINGS = 2048
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
MARKER_FILE = "paliserve-tiny.json"


PROCESSOR_ADDED_TOKENS = 1 + 1024 + 128  # <image>, <locNNNN>, <segNNN>


def _base_vocab(size: int = TEXT_VOCAB_SIZE - PROCESSOR_ADDED_TOKENS, tail: list[str] | tuple = ()) -> dict[str, int]:
    """Special tokens, the 256 byte-fallback tokens, single printable characters, then word
    pieces (two letters, then three, then four) filling `size` ids so every id the model can
    emit decodes; `tail` follows at ids `size` and up."""
    tokens = list(SPECIAL_TOKENS)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    chars = "▁" + string.ascii_letters + string.digits + string.punctuation + "\n"
    tokens += [c for c in chars if c not in tokens]
    pieces = (
        "▁" + "".join(letters)
        for n in (2, 3, 4)
        for letters in itertools.product(string.ascii_lowercase, repeat=n)
    )
    while len(tokens) < size:
        tokens.append(next(pieces))
    tokens += list(tail)
    return {tok: i for i, tok in enumerate(tokens)}


def _build_processor(image_size: int = IMAGE_SIZE, image_tokens: int = IMAGE_TOKENS, vocab: dict[str, int] | None = None):
    """The PaliGemma processor over `vocab` (default: the tiny one). The processor adds
    `<image>`, `<loc…>` and `<seg…>` as added tokens, reusing their ids where `vocab` has them."""
    from transformers import GemmaTokenizer, PaliGemmaProcessor, SiglipImageProcessor

    tokenizer = GemmaTokenizer(vocab=vocab if vocab is not None else _base_vocab(), merges=[])
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
    )
    image_processor.image_seq_length = image_tokens
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _build_config(tokenizer):
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if len(tokenizer) != TEXT_VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {TEXT_VOCAB_SIZE}")
    text = GemmaConfig(
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # vLLM's CPU attention kernels support head_dim 32 and up
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_activation="gelu_pytorch_tanh",
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=text.hidden_size,
        vision_use_head=False,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=image_token_id,
        projection_dim=text.hidden_size,
        hidden_size=text.hidden_size,
        vocab_size=TEXT_VOCAB_SIZE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config.vision_config.num_image_tokens = IMAGE_TOKENS
    config.text_config.num_image_tokens = IMAGE_TOKENS
    return config


def hub_key(key: str) -> str:
    """transformers 5 writes the SigLIP tower as `[model.]vision_tower.embeddings.*`; the hub
    form, which vLLM requires, is `[model.]vision_tower.vision_model.embeddings.*`.
    transformers loads either form."""
    for prefix in ("model.vision_tower.", "vision_tower."):
        if key.startswith(prefix):
            if not key.startswith(prefix + "vision_model."):
                return prefix + "vision_model." + key[len(prefix) :]
            return key
    return key


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a deterministic random-weight PaliGemma to `out_dir` and return the path."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import PaliGemmaForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = _build_processor()
    config = _build_config(processor.tokenizer)

    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():
        # Much wider than the default init: with it greedy decoding emits varied tokens
        # (words and <loc> tokens) instead of repeating one.
        for _, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                param.normal_(0.0, 0.5)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)

    weights = out / "model.safetensors"
    tensors = load_file(weights)
    save_file({hub_key(k): v.contiguous() for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    (out / MARKER_FILE).write_text(json.dumps({"seed": seed, "image_size": IMAGE_SIZE}) + "\n")
    return out


def ensure_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Reuse a tiny model already built with this seed at `out_dir`, or build it."""
    out = Path(out_dir)
    marker = out / MARKER_FILE
    if marker.exists() and json.loads(marker.read_text()).get("seed") == seed:
        return out
    return build_tiny_model(out, seed=seed)
