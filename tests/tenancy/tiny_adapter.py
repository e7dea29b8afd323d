"""A PEFT-format LoRA adapter for the tiny PaliGemma, written offline with safetensors.

Targets the Gemma decoder's q/v/o projections and down_proj in both layers; random A and B
scaled large enough that greedy outputs change (the tests check that they do).
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT_LAYERS = 2
TARGETS = {  # module -> (out_features, in_features) in the tiny model
    "self_attn.q_proj": (64, 64),
    "self_attn.v_proj": (32, 64),
    "self_attn.o_proj": (64, 64),
    "mlp.down_proj": (64, 128),
}
RANK = 8


def make_tiny_adapter(out: Path, base_model: str | Path, seed: int, scale: float = 2.0) -> Path:
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(TEXT_LAYERS):
        for module, (out_features, in_features) in TARGETS.items():
            prefix = f"base_model.model.language_model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, in_features, generator=generator) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, RANK, generator=generator) * scale
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": RANK,
        "lora_alpha": RANK,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": sorted({m.split(".")[1] for m in TARGETS}),
        "modules_to_save": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return out
