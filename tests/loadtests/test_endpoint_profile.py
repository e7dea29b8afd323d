"""`paliserve profile-endpoint`: serving points measured through the shared stack with the load
test's own client, and the plans it refuses before sending anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoscale.profile import DecodePoint, PrefillPoint, Profile, load_profile, save_profile
from loadtests.locust_csv import read_stats
from paliserve.spec import ReplicaBounds
from loadtest_plans import plan_with, tenant

PALISERVE = str(Path(sys.executable).with_name("paliserve"))


def engine_profile(model: str = "tiny-paligemma") -> Profile:
    return Profile(model=model, accelerator="cpu", image_tokens=4,
                   prefill=[PrefillPoint(text_tokens=0, seconds=0.01)],
                   decode=[DecodePoint(batch=1, step_seconds=0.005)])  # fmt: skip


def profile_endpoint(plan, profile: Profile, tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    plan_file, profile_file = tmp_path / "plan.yaml", tmp_path / "profile.yaml"
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    save_profile(profile, profile_file)
    return subprocess.run(
        [PALISERVE, "profile-endpoint", str(plan_file), "--host", url, "--profile", str(profile_file),
         "--work", str(tmp_path / "points"), *args],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


@pytest.mark.engine
def test_serving_points_through_the_stack_agree_with_each_points_load_test(url, tiny_model_dir, tmp_path):
    plan = plan_with(tiny_model_dir, tenant("roomy", 60000, 30000, concurrency=1))
    proc = profile_endpoint(plan, engine_profile(), tmp_path, url, "--concurrency", "3,1", "--seconds", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    profile = load_profile(tmp_path / "profile.yaml")
    assert [p.concurrency for p in profile.serving] == [1, 3]
    assert profile.prefill == engine_profile().prefill  # the engine's points are kept
    w = profile.serving_workload
    assert (w.endpoint, w.prompt_tokens_mean, w.output_tokens_mean, w.seconds_per_point) == (url, 6, 8, 5)
    for point in profile.serving:
        out = tmp_path / "points" / f"c{point.concurrency}"
        at = json.loads((out / "summary.json").read_text())["tenants"]["roomy"]["at_target"]
        assert point.requests == at["requests"] - at["failures"] > 0
        assert point.ttft_p95_seconds * 1e3 == pytest.approx(at["ttft_ms"]["p95"])
        assert point.tpot_mean_seconds * 1e3 == pytest.approx(at["tpot_ms"]["mean"])
        assert point.requests_per_second == pytest.approx(at["requests_per_s"])
        # Locust's own CSV counted the same requests, and its mean TTFT is the point's
        ttft_row = read_stats(out / "locust")[("TTFT", "roomy")]
        assert int(ttft_row["Request Count"]) == point.requests
        assert float(ttft_row["Average Response Time"]) == pytest.approx(point.ttft_mean_seconds * 1e3, abs=1e-3)
        assert 0 < point.ttft_mean_seconds <= point.ttft_p95_seconds
    one, three = profile.serving
    assert three.requests_per_second > one.requests_per_second  # three clients in flight do more than one


def test_a_plan_with_several_replicas_is_refused_before_any_load(tiny_model_dir, tmp_path):
    plan = plan_with(tiny_model_dir, tenant("roomy", 60000, 30000))
    plan.deployments[0].replicas = ReplicaBounds(min=1, initial=2, max=2)
    proc = profile_endpoint(plan, engine_profile(), tmp_path, "http://127.0.0.1:9")
    assert proc.returncode == 2
    assert "exactly one replica" in proc.stdout + proc.stderr
    assert not (tmp_path / "points").exists()


def test_a_profile_of_a_model_the_plan_does_not_serve_is_refused(tiny_model_dir, tmp_path):
    plan = plan_with(tiny_model_dir, tenant("roomy", 60000, 30000))
    proc = profile_endpoint(plan, engine_profile("paligemma-3b-mix-224"), tmp_path, "http://127.0.0.1:9")
    assert proc.returncode == 2
    assert "no deployment of the plan serves the profile's model 'paligemma-3b-mix-224'" in proc.stdout + proc.stderr
