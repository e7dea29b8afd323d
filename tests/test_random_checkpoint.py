"""Random full-size checkpoints: the architecture of every catalog model, checked against
transformers' own PaliGemmaForConditionalGeneration on the meta device (no memory), and a real
write of a small architecture with the real vocabulary, loaded back by transformers."""

from __future__ import annotations

import hashlib
import json

import pytest

from autoscale.catalog import architecture_of, catalog_model_ids, model_from_id
from autoscale.memory import param_counts
from paliserve.random_checkpoint import (
    IMAGE_TOKEN_ID,
    build_config,
    catalog_architecture,
    hub_checkpoint_key,
    meta_model,
    plan_shards,
    tensor_specs,
    write_random_checkpoint,
)
from paliserve.spec import Architecture, TextArchitecture, VisionArchitecture

# pt and mix share an architecture: one of each (family, size, resolution)
ARCHITECTURE_IDS = sorted({i.replace("-mix-", "-pt-") for i in catalog_model_ids()})
HUB_PREFIXES = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.linear.")


@pytest.mark.parametrize("model_id", ARCHITECTURE_IDS)
def test_catalog_architecture_matches_transformers_model(model_id):
    arch = architecture_of(model_from_id(model_id))
    t, v = arch.text, arch.vision
    config = build_config(arch)
    assert config.architectures == ["PaliGemmaForConditionalGeneration"]
    assert config.image_token_index == IMAGE_TOKEN_ID == 257152
    assert config.text_config.model_type == ("gemma2" if model_id.startswith("paligemma2") else "gemma")
    assert config.vision_config.image_size == v.image_size
    assert config.vision_config.num_image_tokens == config.text_config.num_image_tokens == v.image_tokens
    assert v.image_tokens == {224: 256, 448: 1024, 896: 4096}[v.image_size]

    model = meta_model(config)
    state = {k: tuple(p.shape) for k, p in model.state_dict().items()}
    specs = {s.key: s.shape for s in tensor_specs(config)}
    # every tensor of transformers' model is stored under the hub's name, with its shape; only the
    # LM head (tied to the embedding) is left out
    assert {hub_checkpoint_key(k): shape for k, shape in state.items() if k != "lm_head.weight"} == specs
    assert all(k.startswith(HUB_PREFIXES) for k in specs), [k for k in specs if not k.startswith(HUB_PREFIXES)]
    assert "language_model.lm_head.weight" not in specs

    lm = "language_model.model."
    vt = "vision_tower.vision_model."
    assert specs[lm + "embed_tokens.weight"] == (t.vocab_size, t.hidden_size) == (257216, t.hidden_size)
    assert specs[lm + "layers.0.self_attn.q_proj.weight"] == (t.num_heads * t.head_dim, t.hidden_size)
    assert specs[lm + "layers.0.self_attn.k_proj.weight"] == (t.num_kv_heads * t.head_dim, t.hidden_size)
    assert specs[lm + "layers.0.mlp.down_proj.weight"] == (t.hidden_size, t.intermediate_size)
    assert f"{lm}layers.{t.num_layers - 1}.mlp.up_proj.weight" in specs
    assert f"{lm}layers.{t.num_layers}.mlp.up_proj.weight" not in specs
    assert specs[vt + "embeddings.position_embedding.weight"] == (v.image_tokens, v.hidden_size)
    assert specs[vt + "embeddings.patch_embedding.weight"] == (v.hidden_size, 3, v.patch_size, v.patch_size)
    assert f"{vt}encoder.layers.{v.num_layers - 1}.mlp.fc2.weight" in specs
    assert specs["multi_modal_projector.linear.weight"] == (t.hidden_size, v.hidden_size)

    # the planner's parameter count is transformers' own
    stored = sum(p.numel() for p in model.parameters())
    assert param_counts(arch).total == stored


def test_3b_224_has_the_known_parameter_count():
    config = build_config(catalog_architecture("google/paligemma-3b-pt-224"))
    assert sum(s.numel for s in tensor_specs(config)) == 2_923_466_480


def test_shards_respect_the_size_and_keep_order():
    config = build_config(catalog_architecture("paligemma-3b-mix-224"))
    specs = tensor_specs(config)
    shards = plan_shards(specs, 2, 2 * 10**9)
    assert [s.key for shard in shards for s in shard] == [s.key for s in specs]
    assert len(shards) == 3  # 5.85 GB of bfloat16
    assert all(sum(s.numel for s in shard) * 2 <= 2 * 10**9 for shard in shards)


SMALL = Architecture(
    text=TextArchitecture(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                          head_dim=32, vocab_size=257216),
    vision=VisionArchitecture(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=28),
)  # fmt: skip


def _digests(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    # a small architecture with the real vocabulary: the embedding alone is 16 M values (33 MB),
    # so a 10 MB shard limit gives two shards (a tensor larger than the limit gets one to itself)
    return write_random_checkpoint(SMALL, tmp_path_factory.mktemp("small"), max_shard_bytes=10_000_000)


def test_small_checkpoint_loads_in_transformers_with_the_real_tokenizer_layout(small_checkpoint):
    from PIL import Image
    from safetensors import safe_open
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from serve.preflight import check_checkpoint

    index = json.loads((small_checkpoint / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2 and shards[0] == "model-00001-of-00002.safetensors"
    total = 0
    for shard in shards:
        with safe_open(small_checkpoint / shard, "pt") as f:
            for key in f.keys():
                assert index["weight_map"][key] == shard
                total += f.get_tensor(key).nbytes
    assert total == index["metadata"]["total_size"]
    check_checkpoint(str(small_checkpoint))  # pre-flight accepts it

    config = json.loads((small_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["PaliGemmaForConditionalGeneration"]
    model, info = PaliGemmaForConditionalGeneration.from_pretrained(small_checkpoint, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert str(model.dtype) == "torch.bfloat16"

    processor = PaliGemmaProcessor.from_pretrained(small_checkpoint)
    tok = processor.tokenizer
    assert len(tok) == 257153
    ids = tok.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<loc0000>", "<loc1023>", "<seg000>", "<seg127>", "<image>"])
    assert ids == [0, 1, 2, 256000, 257023, 257024, 257151, 257152]
    inputs = processor(text="caption en", images=Image.new("RGB", (40, 30)), return_tensors="pt")
    assert (inputs["input_ids"] == 257152).sum() == SMALL.vision.image_tokens


def test_same_seed_same_bytes_whatever_the_sharding(small_checkpoint, tmp_path):
    from safetensors.torch import load_file

    again = write_random_checkpoint(SMALL, tmp_path / "again", max_shard_bytes=10_000_000)
    assert _digests(again) == _digests(small_checkpoint)
    one = write_random_checkpoint(SMALL, tmp_path / "one", max_shard_bytes=10**12)
    merged = {}
    for p in small_checkpoint.glob("*.safetensors"):
        merged.update(load_file(p))
    single = load_file(one / "model-00001-of-00001.safetensors")
    assert single.keys() == merged.keys() and all((single[k] == merged[k]).all() for k in single)
    other = write_random_checkpoint(SMALL, tmp_path / "other", seed=1, max_shard_bytes=10_000_000)
    assert _digests(other) != _digests(small_checkpoint)


def test_cli_refuses_a_model_outside_the_catalog(tmp_path):
    from typer.testing import CliRunner

    from paliserve.cli import app

    result = CliRunner().invoke(app, ["random-checkpoint", "llama-7b", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "not a catalog id" in result.output
