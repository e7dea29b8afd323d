"""Real-size serving without a real-size engine: the pre-flight checks that refuse a checkpoint
vLLM would not serve for generation, the CPU's dtype choice, and the refusal of a model the
machine's memory cannot hold (RAM figures passed in, never the machine's own)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from serve.preflight import CheckpointError, check_checkpoint


def _checkpoint(tmp_path, config):
    import torch

    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize(
    "architectures, cause",
    [
        (None, "config.json has no `architectures`: vLLM would load it as a pooling model"),
        ([], "config.json has no `architectures`"),
        (["PaliGemmaModel"], "architectures ['PaliGemmaModel'] are not generative"),
        (["PaliGemmaForSequenceClassification"], "are not generative"),
        ([3], "`architectures` is not a list of names"),
    ],
)
def test_preflight_refuses_a_config_without_a_generative_architecture(tmp_path, architectures, cause):
    config = {"model_type": "paligemma"}
    if architectures is not None:
        config["architectures"] = architectures
    path = _checkpoint(tmp_path, config)
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(str(path))
    message = str(raised.value)
    assert message.startswith(f"checkpoint {path}: ") and cause in message, message
    if architectures != [3]:
        assert 'add "architectures": ["PaliGemmaForConditionalGeneration"] to config.json' in message


@pytest.mark.parametrize("architectures", [["PaliGemmaForConditionalGeneration"], ["GemmaForCausalLM"], "LlamaForCausalLM"])
def test_preflight_passes_generative_architectures(tmp_path, architectures):
    check_checkpoint(str(_checkpoint(tmp_path, {"model_type": "x", "architectures": architectures})))


def test_up_refuses_a_config_without_architectures_before_starting_anything(tmp_path):
    import os
    import subprocess

    from conftest import PALISERVE

    path = _checkpoint(tmp_path, {"model_type": "paligemma"})
    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([PALISERVE, "up", "--detach", "--port", "1", "--device", "cpu", "--model", str(path)],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"checkpoint {path}: config.json has no `architectures`" in result.stderr
    assert "starting Ray" not in result.stderr
