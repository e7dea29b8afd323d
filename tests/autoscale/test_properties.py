"""Properties of the planner over random loads, models and accelerators."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from autoscale.catalog import GPU_CATALOG, catalog_model_ids
from autoscale.errors import InfeasiblePlan
from autoscale.planner import plan
from planspecs import one_tenant

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GPUS = sorted(n for n, a in GPU_CATALOG.items() if a.device == "gpu")
MODELS = sorted(catalog_model_ids())

loads = st.fixed_dictionaries({
    "model_id": st.sampled_from(MODELS),
    "gpu": st.sampled_from(GPUS),
    "concurrency": st.integers(1, 400),
    "prompt": st.integers(1, 300),
    "output": st.integers(1, 400),
    "ttft": st.floats(200, 20_000),
    "tpot": st.floats(10, 300),
})


def plan_or_none(**kwargs):
    try:
        return plan(one_tenant(count=10_000, **kwargs))
    except InfeasiblePlan:
        return None


@FEW
@given(loads)
def test_memory_never_exceeds_the_device(load):
    result = plan_or_none(**load)
    assume(result is not None)
    for d in result.deployments:
        m = d.memory
        parts = m.weights + m.kv_cache + m.activation + m.encoder_cache + m.cuda_graphs + m.runtime + m.lora
        assert parts <= m.total <= d.engine_args.gpu_memory_utilization * m.device_bytes + 1
        assert m.kv_cache >= 0 and d.kv_cache.tokens_per_replica >= d.engine_args.max_model_len
    for gpu in result.gpu_layout:
        assert sum(s.memory_utilization for s in gpu.slots) <= 0.92 + 1e-9
        assert sum(s.share for s in gpu.slots) <= 1 + 1e-9


@FEW
@given(loads, st.integers(1, 400))
def test_more_concurrency_never_fewer_replicas(load, extra):
    low = plan_or_none(**load)
    high = plan_or_none(**(load | {"concurrency": load["concurrency"] + extra}))
    assume(low is not None and high is not None)
    a, b = low.deployments[0].replicas, high.deployments[0].replicas
    assert b.initial >= a.initial and b.max >= a.max


@FEW
@given(loads, st.floats(1.0, 4.0), st.floats(1.0, 4.0))
def test_faster_gpu_never_needs_more_replicas(load, faster_memory, faster_compute):
    base = GPU_CATALOG[load["gpu"]]
    figures = {"memory_gb": base.memory_bytes / 1e9, "bandwidth_tb_s": base.bandwidth_bytes_s / 1e12,
               "tflops": base.flops / 1e12}
    slow = plan_or_none(**(load | {"gpu": "custom"}), **figures)
    assume(slow is not None)
    fast_figures = figures | {"bandwidth_tb_s": figures["bandwidth_tb_s"] * faster_memory,
                              "tflops": figures["tflops"] * faster_compute}
    fast = plan_or_none(**(load | {"gpu": "custom"}), **fast_figures)
    assert fast is not None  # whatever the slow GPU serves, the faster one serves
    assert fast.deployments[0].replicas.initial <= slow.deployments[0].replicas.initial
    assert fast.deployments[0].replicas.max <= slow.deployments[0].replicas.max


@settings(max_examples=15, deadline=None)
@given(loads)
def test_every_plan_renders_a_valid_serve_config(load):
    schema = pytest.importorskip("ray.serve.schema")
    result = plan_or_none(**load)
    assume(result is not None)
    config = schema.ServeDeploySchema.model_validate(result.serve_config())
    deployment = config.applications[0].deployments[0]
    bounds = result.deployments[0].replicas
    if bounds.min == bounds.max and result.deployments[0].autoscaling.policy is None:
        assert deployment.num_replicas == bounds.max  # nothing to scale: a fixed count
    else:
        assert deployment.autoscaling_config["max_replicas"] == bounds.max
