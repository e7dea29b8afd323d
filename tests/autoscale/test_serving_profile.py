"""The planner with serving points: the endpoint's measured figures at a concurrency are what it
predicts at that batch for the same requests, interpolated in between; without them, nothing
changes."""

import pytest
from pydantic import ValidationError

from autoscale.errors import InfeasiblePlan
from autoscale.loading import parse_spec
from autoscale.planner import plan
from autoscale.profile import DecodePoint, PrefillPoint, Profile, ServingPoint, ServingWorkload
from paliserve.spec import Slo, Workload
from planspecs import LOCAL_CPU

PROMPT, OUTPUT = 20, 64


def engine_profile(**update) -> Profile:
    return Profile(
        model="tiny-paligemma", accelerator="cpu", image_tokens=4,
        prefill=[PrefillPoint(text_tokens=0, seconds=0.010), PrefillPoint(text_tokens=100, seconds=0.014)],
        decode=[DecodePoint(batch=1, step_seconds=0.004), DecodePoint(batch=32, step_seconds=0.008)],
        **update,
    )  # fmt: skip


def serving_point(c: int, ttft_p95: float, ttft_mean: float, tpot: float) -> ServingPoint:
    return ServingPoint(concurrency=c, ttft_p95_seconds=ttft_p95, ttft_mean_seconds=ttft_mean, tpot_mean_seconds=tpot,
                        requests_per_second=1.0, output_tokens_per_second=64.0, requests=100)  # fmt: skip


WORKLOAD = ServingWorkload(endpoint="http://127.0.0.1:8000", prompt_tokens_mean=PROMPT, prompt_tokens_p95=PROMPT,
                           output_tokens_mean=OUTPUT, seconds_per_point=20)  # fmt: skip
POINTS = [serving_point(1, 0.20, 0.15, 0.030), serving_point(4, 0.40, 0.25, 0.035), serving_point(16, 1.20, 0.60, 0.050)]


def planned(concurrency: int, profile: Profile, ttft: float = 20_000, devices: int = 1):
    """The local CPU spec (a CPU device per replica) at this concurrency."""
    spec = parse_spec(open(LOCAL_CPU).read(), env={"PALISERVE_TINY_MODEL": "/tmp/tiny"})
    spec.gpus[0].count = devices
    tenant = spec.tenants[0]
    tenant.limits.max_concurrency = None
    tenant.workload = Workload(concurrency=concurrency, peak_concurrency=concurrency, prompt_tokens=PROMPT,
                               output_tokens=OUTPUT)  # fmt: skip
    tenant.slo = Slo(ttft_p95_ms=ttft, tpot_p95_ms=1000)
    return plan(spec, [(profile, "profile cpu.yaml")])


@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"c{p.concurrency}")
def test_at_a_measured_concurrency_the_prediction_is_the_measurement(point):
    result = planned(point.concurrency, engine_profile(serving=POINTS, serving_workload=WORKLOAD))
    d, t = result.deployments[0], result.tenants[0]
    assert d.replicas.initial == 1
    assert t.predicted_ttft_p95_ms == pytest.approx(point.ttft_p95_seconds * 1e3, abs=0.01)
    assert t.predicted_tpot_ms == pytest.approx(point.tpot_mean_seconds * 1e3, abs=0.01)
    e2e = point.ttft_mean_seconds + (OUTPUT - 1) * point.tpot_mean_seconds
    assert d.predicted.tokens_per_s == pytest.approx(point.concurrency * OUTPUT / e2e, abs=0.1)


def test_between_measured_concurrencies_the_path_is_interpolated():
    with_path = planned(10, engine_profile(serving=POINTS, serving_workload=WORKLOAD)).tenants[0]
    engine_only = planned(10, engine_profile()).tenants[0]
    low, high = planned(4, engine_profile(serving=POINTS, serving_workload=WORKLOAD)), planned(16, engine_profile(serving=POINTS, serving_workload=WORKLOAD))  # fmt: skip
    assert low.tenants[0].predicted_ttft_p95_ms < with_path.predicted_ttft_p95_ms < high.tenants[0].predicted_ttft_p95_ms
    assert with_path.predicted_ttft_p95_ms > engine_only.predicted_ttft_p95_ms + 500


def test_latency_never_falls_as_measured_concurrency_grows():
    noisy = [serving_point(1, 0.30, 0.20, 0.030), serving_point(4, 0.25, 0.18, 0.028), serving_point(16, 1.0, 0.5, 0.05)]
    profile = engine_profile(serving=noisy, serving_workload=WORKLOAD)
    ttfts = [planned(c, profile).tenants[0].predicted_ttft_p95_ms for c in (1, 2, 4, 8)]
    assert ttfts == sorted(ttfts)


def test_the_serving_path_shrinks_the_batch_that_meets_the_ttft_slo():
    loose = planned(64, engine_profile(), ttft=1000, devices=16).deployments[0]
    measured = planned(64, engine_profile(serving=POINTS, serving_workload=WORKLOAD), ttft=1000, devices=16).deployments[0]
    assert measured.engine_args.max_num_seqs < loose.engine_args.max_num_seqs
    assert measured.replicas.initial > loose.replicas.initial
    assert "serving path measured through http://127.0.0.1:8000 at concurrency 1, 4, 16: at 13 it adds" in measured.reasons["predicted"]


def test_an_slo_below_the_measured_path_is_infeasible_and_says_so():
    with pytest.raises(InfeasiblePlan, match="measured serving path") as error:
        planned(1, engine_profile(serving=POINTS, serving_workload=WORKLOAD), ttft=150)
    assert error.value.limit == "ttft_slo"


def test_serving_points_need_the_workload_they_were_measured_with():
    with pytest.raises(ValidationError, match="serving_workload"):
        engine_profile(serving=POINTS)
