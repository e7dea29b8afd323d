"""Traffic profiles from plans, request bodies, token-length sampling and API keys."""

import json
import random
import statistics

import pytest

from loadtests.keys import DEV_KEYS, ENV_KEYS, sha256, supplied_keys, tenant_keys
from loadtests.traffic import (
    PlanError,
    TrafficProfile,
    chat_body,
    lognormal,
    profile_from_plan,
    prompt_text,
    sample_tokens,
)
from loadtest_plans import plan_with, tenant


@pytest.mark.parametrize("mean,p95", [(16, 32), (64, 128), (10, 11), (20, 20)])
def test_sampled_lengths_have_the_workloads_mean_and_p95(mean, p95):
    rng = random.Random(1)
    samples = [sample_tokens(rng, mean, p95) for _ in range(20000)]
    assert statistics.fmean(samples) == pytest.approx(mean, rel=0.05)
    assert sorted(samples)[int(0.95 * len(samples))] == pytest.approx(p95, rel=0.08, abs=1)


def test_lognormal_caps_sigma_where_mean_and_p95_are_incompatible():
    _, sigma = lognormal(10, 1000)
    assert sigma == pytest.approx(1.6448536269514722)


def test_profile_carries_each_tenants_workload_slo_and_prediction(tmp_path):
    plan = plan_with("/models/tiny", tenant("a", 500, 50, concurrency=3, peak=6), tenant("b", 900, 90, concurrency=1))
    profile = profile_from_plan(plan, {"a": None, "b": None}, "closed", "step", 20, str(tmp_path / "r.jsonl"))
    a, b = profile.tenants
    assert (a.name, a.model, a.deployment, a.concurrency, a.peak_concurrency) == ("a", "tiny-paligemma", "tiny-paligemma", 3, 6)
    assert (a.slo_ttft_p95_ms, a.slo_tpot_p95_ms, a.predicted_ttft_p95_ms) == (500, 50, 100.0)
    assert a.image_size == 224  # tiny_plan leaves image_tokens at 0: PaliGemma's smallest resolution
    assert profile.peak_ratio == pytest.approx(7 / 4)
    assert profile.deployments["tiny-paligemma"]["tokens_per_s"] == 500.0
    assert TrafficProfile.from_json(profile.to_json()) == profile


def test_open_loop_rate_is_the_workloads_or_littles_law_on_the_prediction(tmp_path):
    plan = plan_with("/m", tenant("given", 500, 50, request_rate=4.0), tenant("derived", 500, 50, concurrency=2, output=11))
    profile = profile_from_plan(plan, {}, "open", "steady", 10, str(tmp_path / "r.jsonl"))
    given, derived = profile.tenants
    assert given.request_rate == 4.0
    assert derived.request_rate == pytest.approx(2 / ((100 + 10 * 10) / 1e3))  # 2 / (TTFT + 10 x TPOT)
    assert "Little" in derived.rate_source


def test_plans_without_workloads_and_bad_options_are_rejected(tmp_path):
    with pytest.raises(PlanError, match="no tenant"):
        profile_from_plan(plan_with("/m"), {}, "closed", "steady", 10, str(tmp_path / "r"))
    plan = plan_with("/m", tenant("a", 1, 1))
    with pytest.raises(PlanError, match="mode"):
        profile_from_plan(plan, {}, "half-open", "steady", 10, str(tmp_path / "r"))
    with pytest.raises(ValueError, match="shape"):
        profile_from_plan(plan, {}, "closed", "zigzag", 10, str(tmp_path / "r"))


def test_chat_body_is_a_streamed_openai_request_with_one_image():
    plan = plan_with("/m", tenant("a", 500, 50, output=16))
    t = profile_from_plan(plan, {}, "closed", "steady", 10, "/dev/null").tenants[0]
    body = chat_body(t, random.Random(0), "data:image/png;base64,AAAA")
    text, image = body["messages"][0]["content"]
    assert text["type"] == "text" and len(text["text"].split()) >= 1
    assert image == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "tiny-paligemma" and body["max_tokens"] >= 1


def test_keys_come_from_file_then_env_and_must_match_the_hashes(tmp_path):
    plan = plan_with("/m", tenant("a", 1, 1, keys=[sha256("sk-a")]), tenant("open", 1, 1),
                     tenant("dev", 1, 1, keys=[sha256(DEV_KEYS[0])]))  # fmt: skip
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("a: sk-a\n")
    assert tenant_keys(plan, supplied_keys(keys_file, env={})) == {"a": "sk-a", "open": None, "dev": "sk-local-dev"}
    from_env = supplied_keys(None, env={ENV_KEYS: json.dumps({"a": "sk-a"})})
    assert tenant_keys(plan, from_env)["a"] == "sk-a"
    with pytest.raises(PlanError, match="tenant a: the supplied key does not match"):
        tenant_keys(plan, {"a": "sk-wrong"})
    with pytest.raises(PlanError, match="tenant a needs its API key"):
        tenant_keys(plan, {})


def test_prompt_words_follow_the_calibrated_tokens_per_word():
    rng = random.Random(0)
    assert len(prompt_text(rng, 12).split()) == 12
    assert len(prompt_text(rng, 12, tokens_per_word=3.0).split()) == 4
    assert len(prompt_text(rng, 1, tokens_per_word=3.0).split()) == 1
