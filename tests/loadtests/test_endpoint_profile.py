"""`paliserve profile-endpoint`: serving points measured through the shared stack with the load
test's own client, and the plans it refuses before sending anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoscale.profile import DecodePoint, PrefillPoint, Profile, ServingPoint, load_profile, save_profile
from loadtests.locust_csv import read_stats
from paliserve.endpoint_profile import combine
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
def test_serving_points_through_the_stack_combine_each_passs_load_test(url, tiny_model_dir, tmp_path):
    plan = plan_with(tiny_model_dir, tenant("roomy", 60000, 30000, concurrency=1))
    proc = profile_endpoint(plan, engine_profile(), tmp_path, url, "--concurrency", "3,1", "--seconds", "4", "--passes", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    profile = load_profile(tmp_path / "profile.yaml")
    assert [p.concurrency for p in profile.serving] == [1, 3]
    assert profile.prefill == engine_profile().prefill  # the engine's points are kept
    w = profile.serving_workload
    assert (w.endpoint, w.prompt_tokens_mean, w.output_tokens_mean, w.seconds_per_point, w.passes) == (url, 6, 8, 4, 2)
    for point in profile.serving:
        passes = []
        for n in (1, 2):
            out = tmp_path / "points" / f"pass{n}" / f"c{point.concurrency}"
            at = json.loads((out / "summary.json").read_text())["tenants"]["roomy"]["at_target"]
            ok = at["requests"] - at["failures"]
            assert ok > 0
            # Locust's own CSV counted the same requests, with the same mean TTFT
            ttft_row = read_stats(out / "locust")[("TTFT", "roomy")]
            assert int(ttft_row["Request Count"]) == ok
            assert float(ttft_row["Average Response Time"]) == pytest.approx(at["ttft_ms"]["mean"], abs=1e-3)
            passes.append((ok, at))
        total = sum(ok for ok, _ in passes)
        assert point.requests == total
        assert point.ttft_p95_seconds * 1e3 == pytest.approx(sum(ok * at["ttft_ms"]["p95"] for ok, at in passes) / total)
        assert point.ttft_mean_seconds * 1e3 == pytest.approx(sum(ok * at["ttft_ms"]["mean"] for ok, at in passes) / total)
        assert point.tpot_mean_seconds * 1e3 == pytest.approx(sum(ok * at["tpot_ms"]["mean"] for ok, at in passes) / total)
        assert point.requests_per_second == pytest.approx(sum(at["requests_per_s"] for _, at in passes) / 2)
        assert 0 < point.ttft_mean_seconds <= point.ttft_p95_seconds
    one, three = profile.serving
    assert three.requests_per_second > one.requests_per_second  # three clients in flight do more than one


def test_passes_combine_weighted_by_requests():
    def point(requests, ttft_p95, rps):
        return ServingPoint(concurrency=4, ttft_mean_seconds=ttft_p95 / 2, ttft_p95_seconds=ttft_p95, tpot_mean_seconds=0.01,
                            requests_per_second=rps, output_tokens_per_second=rps * 16, requests=requests, failures=1)  # fmt: skip

    both = combine([point(300, 0.2, 30.0), point(100, 0.6, 10.0)])
    assert both.ttft_p95_seconds == pytest.approx((300 * 0.2 + 100 * 0.6) / 400)
    assert both.ttft_mean_seconds == pytest.approx(both.ttft_p95_seconds / 2)
    assert (both.requests, both.failures, both.concurrency) == (400, 2, 4)
    assert both.requests_per_second == pytest.approx(20.0) and both.output_tokens_per_second == pytest.approx(320.0)


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
