"""`paliserve profile` against a real vLLM engine on the tiny PaliGemma (CPU), then a plan from it."""

import os
import subprocess
import sys

import pytest

from autoscale.loading import load_spec
from autoscale.planner import plan
from autoscale.profile import load_profile
from planspecs import LOCAL_CPU


@pytest.mark.engine
@pytest.mark.timeout(240)
def test_profile_a_running_engine_and_plan_with_it(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    from paliserve.tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "profile.yaml"
    env = os.environ | {"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    subprocess.run(
        [sys.executable, "-m", "autoscale.profiler", "--checkpoint", str(model_dir), "--model", "tiny-paligemma",
         "--accelerator", "cpu", "-o", str(out), "--prompt-tokens", "4,64", "--batches", "1,8",
         "--decode-tokens", "8", "--repeats", "1"],
        check=True, env=env, timeout=200, capture_output=True,
    )
    profile = load_profile(out)
    assert profile.image_tokens == 4 and len(profile.prefill) == 2 and len(profile.decode) == 2
    assert profile.tensor_parallel_size == 1
    assert all(p.seconds > 0 for p in profile.prefill) and all(p.step_seconds > 0 for p in profile.decode)

    monkeypatch.setenv("PALISERVE_TINY_MODEL", str(model_dir))
    result = plan(load_spec(str(LOCAL_CPU)), [(profile, f"profile {out}")])
    assert result.deployments[0].calibration == f"profile {out}"
    assert result.tenants[0].headroom.ttft_ms > 0


def test_the_profiled_engine_spans_the_tensor_parallel_size_asked_for():
    pytest.importorskip("vllm")
    from autoscale.profiler import ProfileSettings, _engine_args

    settings = ProfileSettings(checkpoint="google/paligemma2-3b-pt-224", model="pg2", accelerator="H100",
                               tensor_parallel_size=2)  # fmt: skip
    assert _engine_args(settings).tensor_parallel_size == 2
