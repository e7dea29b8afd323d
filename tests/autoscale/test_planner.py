import json

import pytest
import yaml

from autoscale.errors import InfeasiblePlan
from autoscale.loading import dump_plan, load_spec, parse_spec
from autoscale.planner import SpecError, plan
from autoscale.profile import DecodePoint, PrefillPoint, Profile
from paliserve.spec import Plan
from planspecs import EXAMPLE, LOCAL_CPU, one_tenant


def test_example_spec_plans_with_a_reason_for_every_number():
    result = plan(load_spec(str(EXAMPLE)))
    assert {d.model for d in result.deployments} == {"pg-mix-448", "pg2-10b-896"}
    for d in result.deployments:
        for key in ("replicas.initial", "replicas.max", "replicas.min", "engine_args.max_num_seqs",
                    "engine_args.gpu_memory_utilization", "engine_args.max_model_len",
                    "engine_args.tensor_parallel_size", "kv_cache.tokens_per_replica", "weights_bytes"):
            assert d.reasons[key], key
    assert all(t.headroom.ttft_ms >= 0 and t.headroom.tpot_ms >= 0 for t in result.tenants)
    assert result.gpus == len(result.gpu_layout) and result.cost.per_hour_max is not None
    lora = next(d for d in result.deployments if d.adapters)
    assert lora.engine_args.enable_lora and lora.adapters[0].tenant == "acme"


def test_plan_round_trips_through_yaml(tmp_path):
    result = plan(load_spec(str(EXAMPLE)))
    path = tmp_path / "plan.yaml"
    path.write_text(dump_plan(result))
    assert Plan.model_validate(yaml.safe_load(open(path))) == result


def test_serve_config_validates_against_ray():
    schema = pytest.importorskip("ray.serve.schema")
    result = plan(load_spec(str(EXAMPLE)))
    config = schema.ServeDeploySchema.model_validate(result.serve_config())
    app = config.applications[0]
    assert app.import_path == "serve.app:app_builder"
    assert Plan.model_validate(app.args["plan"]) == result
    json.dumps(result.serve_config())


def test_large_model_on_small_gpus_uses_tensor_parallelism():
    d = plan(one_tenant("paligemma2-28b-pt-224", gpu="L4", per_node=4, ttft=60_000, tpot=2000)).deployments[0]
    assert d.engine_args.tensor_parallel_size == 4
    assert d.ray_actor_options.num_gpus == 4 and d.gpus_per_replica == 4


def test_light_load_shares_a_gpu_and_shares_sum_below_the_limit():
    result = plan(one_tenant("paligemma-3b-mix-224", gpu="H100-SXM", concurrency=2))
    d = result.deployments[0]
    assert d.gpus_per_replica < 1
    for gpu in result.gpu_layout:
        assert sum(s.memory_utilization for s in gpu.slots) <= 0.92
        assert sum(s.share for s in gpu.slots) <= 1


def test_model_that_fits_no_gpu_names_memory_and_a_change():
    with pytest.raises(InfeasiblePlan) as error:
        plan(one_tenant("paligemma2-28b-pt-224", gpu="T4", per_node=1))
    assert error.value.limit == "memory"
    assert "GB" in error.value.detail and "per_node" in error.value.change


def test_ttft_below_the_hardware_floor():
    with pytest.raises(InfeasiblePlan) as error:
        plan(one_tenant("paligemma2-10b-pt-896", gpu="L4", per_node=4, ttft=50))
    assert error.value.limit == "ttft_slo"
    assert "50 ms" in error.value.detail and "at least" in error.value.change


def test_tpot_below_the_decode_floor():
    with pytest.raises(InfeasiblePlan) as error:
        plan(one_tenant("paligemma-3b-mix-224", gpu="L4", tpot=5))
    assert error.value.limit == "tpot_slo" and "tpot_p95_ms" in error.value.change


def test_pool_too_small_says_how_many_to_add():
    with pytest.raises(InfeasiblePlan) as error:
        plan(one_tenant("paligemma-3b-mix-448", gpu="L4", count=2, concurrency=500, ttft=3000))
    assert error.value.limit == "pool"
    assert "the pool has 2" in error.value.detail and "raise the L4 count to" in error.value.change


def test_request_too_long_for_the_model():
    with pytest.raises(InfeasiblePlan) as error:
        plan(one_tenant("paligemma2-3b-pt-896", prompt=3000, output=2000))
    assert error.value.limit == "max_model_len"


def test_validation_errors_name_the_field():
    base = open(EXAMPLE).read()
    with pytest.raises(SpecError, match=r"tenants\.0\.slo\.ttft_p95_ms"):
        parse_spec(base.replace("ttft_p95_ms: 1500", "ttft_p95_ms: -1"))
    with pytest.raises(SpecError, match=r"tenants\[1\]\.models\[0\]: unknown model"):
        parse_spec(base.replace("models: [pg2-10b-896, pg-mix-448]", "models: [nope]"))
    with pytest.raises(SpecError, match=r"prompt_tokens.*p95"):
        parse_spec(base.replace("{mean: 12, p95: 30}", "{mean: 12, p95: 3}"))
    with pytest.raises(SpecError, match=r"gpus\[0\]\.type"):
        plan(parse_spec(base.replace("type: L4", "type: Z9")))


def test_env_placeholder_must_be_set(monkeypatch):
    monkeypatch.delenv("PALISERVE_TINY_MODEL", raising=False)
    with pytest.raises(SpecError, match=r"models\[0\]\.checkpoint: environment variable PALISERVE_TINY_MODEL"):
        load_spec(str(LOCAL_CPU))


def test_architecture_from_a_checkpoint_config(tmp_path):
    config = {
        "text_config": {"model_type": "gemma", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 2048,
                        "max_position_embeddings": 2048},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "patch_size": 14, "image_size": 28},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    text = open(LOCAL_CPU).read()
    start, end = text.index("    # Explicit"), text.index("    dtype: float32")
    spec = parse_spec(text[:start] + text[end:], env={"PALISERVE_TINY_MODEL": str(tmp_path)})
    assert spec.models[0].architecture.vision.image_tokens == 4
    assert plan(spec).deployments[0].kv_cache.bytes_per_token == 256


def test_a_matching_profile_replaces_datasheet_figures():
    spec = one_tenant("paligemma-3b-mix-224", gpu="L4", concurrency=16)
    profile = Profile(model="paligemma-3b-mix-224", accelerator="L4",
                      prefill=[PrefillPoint(text_tokens=0, seconds=0.05), PrefillPoint(text_tokens=100, seconds=0.07)],
                      decode=[DecodePoint(batch=1, step_seconds=0.02), DecodePoint(batch=32, step_seconds=0.03)])
    measured = plan(spec, [(profile, "profile l4.yaml")])
    assert measured.deployments[0].calibration == "profile l4.yaml"
    assert any("profile l4.yaml" in r for r in measured.reasons)
    datasheet = plan(spec)
    assert "datasheet" in datasheet.deployments[0].calibration
    other = profile.model_copy(update={"accelerator": "A10G"})
    assert any("matches no deployment" in r for r in plan(spec, [(other, "p")]).reasons)
    wider = plan(spec, [(profile.model_copy(update={"tensor_parallel_size": 2}), "profile tp2.yaml")])
    assert "datasheet" in wider.deployments[0].calibration
    assert "profile tp2.yaml is not used: it was measured at tensor_parallel_size 2, this deployment needs 1" in (
        wider.deployments[0].calibration
    )


def test_one_model_without_adapters_runs_the_gateway_inside_its_engine_replicas():
    single = plan(one_tenant())
    assert single.colocated
    (entry,) = single.serve_config()["applications"][0]["deployments"]
    # the ingress replica holds its fair queue too, so it accepts more than its engine's batch
    assert entry["max_ongoing_requests"] == single.ingress_max_ongoing_requests() >= 4 * single.deployments[0].max_ongoing_requests
    assert not single.model_copy(update={"gateway": single.gateway.model_copy(update={"colocate": False})}).colocated


def test_adapters_or_several_models_keep_the_gateway_separate():
    example = plan(load_spec(str(EXAMPLE)))
    assert len(example.deployments) > 1 and not example.colocated
    data = example.model_dump(mode="json")
    data["gateway"]["colocate"] = True
    with pytest.raises(ValueError, match="gateway.colocate needs a plan with one deployment; this one has 2"):
        Plan.model_validate(data)
