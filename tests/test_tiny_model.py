import hashlib
import json

import pytest

from paliserve.tiny_model import IMAGE_TOKENS, build_tiny_model


def digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_checkpoint_has_hub_keys_tokens_and_loads_in_transformers(tiny_model_dir):
    from safetensors import safe_open
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    with safe_open(tiny_model_dir / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if "vision_tower" in k]
    assert vision and all(".vision_tower.vision_model." in f".{k}" for k in vision)

    processor = PaliGemmaProcessor.from_pretrained(tiny_model_dir)
    tok = processor.tokenizer
    for token in ["<image>", "<loc0000>", "<loc1023>", "<seg000>", "<seg127>"]:
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id, token
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["image_token_index"] == tok.convert_tokens_to_ids("<image>")
    assert processor.image_seq_length == IMAGE_TOKENS == 4

    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert digest(again) == digest(tiny_model_dir)
    assert digest(other) != digest(tiny_model_dir)


def test_cli_writes_a_tiny_model(tmp_path):
    from typer.testing import CliRunner

    from paliserve.cli import app

    result = CliRunner().invoke(app, ["tiny-model", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert json.loads((tmp_path / "m" / "paliserve-tiny.json").read_text())["seed"] == 3


@pytest.mark.parametrize("key,expected", [
    ("vision_tower.embeddings.patch_embedding.weight", "vision_tower.vision_model.embeddings.patch_embedding.weight"),
    ("model.vision_tower.encoder.layers.0.mlp.fc1.bias", "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias"),
    ("vision_tower.vision_model.post_layernorm.bias", "vision_tower.vision_model.post_layernorm.bias"),
    ("language_model.model.norm.weight", "language_model.model.norm.weight"),
])  # fmt: skip
def test_hub_key_names(key, expected):
    from paliserve.tiny_model import hub_key

    assert hub_key(key) == expected
