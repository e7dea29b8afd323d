"""The Prometheus-driven policy's decisions on recorded metric series: fast, no cluster."""

from __future__ import annotations

import logging

import pytest
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingPolicy
from ray.serve._private.autoscaling_state import _resolve_policy_callable

from autoscale.policy import PrometheusPolicy
from autoscale.policy_plan import POLICY_IMPORT_PATH, prometheus_policy
from paliserve.spec import ReplicaBounds
from policy_series import MODEL, context, recorded
from serve.cluster import free_port

KWARGS = prometheus_policy(
    MODEL, MODEL, ReplicaBounds(min=1, initial=1, max=3), target_ongoing_requests=8, ttft_slo_ms=500
).policy_kwargs


@pytest.fixture
def policy():
    return PrometheusPolicy(**KWARGS)


def test_queries_are_scoped_to_the_deployments_model(policy):
    for query in policy.queries.all():
        assert f'model_name="{MODEL}"' in query
        assert query.count("ray_vllm_") == query.count(f'{{model_name="{MODEL}"}}')


def test_waiting_requests_scale_up_at_once_to_what_drains_them(policy):
    results = recorded(policy.queries, waiting={"r0": 5}, running={"r0": 8}, kv={"r0": 0.3}, ttft_p95_s=0.2)
    decision = policy.decide(context(current=1), results)
    assert (decision.desired, decision.reason) == (3, "scale_up_waiting_requests")  # 5x pressure, capped at max
    assert decision.inputs["waiting"] == 5


def test_kv_cache_pressure_scales_up(policy):
    results = recorded(policy.queries, waiting={}, running={"r0": 8, "r1": 8}, kv={"r0": 0.95, "r1": 0.9})
    decision = policy.decide(context(current=2), results)
    assert (decision.desired, decision.reason) == (3, "scale_up_kv_cache")


def test_ttft_over_the_tightest_slo_scales_up(policy):
    results = recorded(policy.queries, waiting={}, running={"r0": 4}, kv={"r0": 0.2}, ttft_p95_s=0.8)
    decision = policy.decide(context(current=1), results)
    assert (decision.desired, decision.reason) == (2, "scale_up_ttft_slo")  # 0.8 s / 0.5 s = 1.6 x 1 replica


def test_moderate_load_holds(policy):
    results = recorded(policy.queries, waiting={}, running={"r0": 6, "r1": 6}, kv={"r0": 0.6, "r1": 0.6}, ttft_p95_s=0.3)
    decision = policy.decide(context(current=2), results)
    assert (decision.desired, decision.reason) == (2, "hold")


def test_idle_scales_down_one_replica_at_a_time(policy):
    results = recorded(policy.queries, waiting={}, running={"r0": 0, "r1": 0, "r2": 0}, kv={"r0": 0, "r1": 0, "r2": 0})
    decision = policy.decide(context(current=3), results)
    assert (decision.desired, decision.reason) == (2, "scale_down_idle")


def test_never_below_the_plans_min(policy):
    results = recorded(policy.queries, waiting={}, running={"r0": 0}, kv={"r0": 0})
    assert policy.decide(context(current=1), results).desired == 1


def test_no_scale_down_while_in_flight_requests_need_the_replicas(policy):
    # 20 in flight need ceil(20 / 8) = 3 replicas even though nothing waits and the cache is cool
    results = recorded(policy.queries, waiting={}, running={"r0": 7, "r1": 7, "r2": 6}, kv={"r0": 0.1, "r1": 0.1, "r2": 0.1})
    assert policy.decide(context(current=3), results).reason == "hold"


def test_pending_replicas_are_kept_while_pressure_lasts(policy):
    # Serve already targets 3 but only 2 run (the third waits for a GPU share)
    results = recorded(policy.queries, waiting={"r0": 1, "r1": 1}, running={"r0": 8, "r1": 8}, kv={"r0": 0.5, "r1": 0.5})
    decision = policy.decide(context(current=2, target=3), results)
    assert decision.desired == 3


def test_pending_replicas_are_dropped_once_the_engines_are_cool(policy):
    # Serve targets 3, 2 run and the third cannot be placed; the load has ended
    idle = recorded(policy.queries, waiting={}, running={"r0": 0, "r1": 0}, kv={"r0": 0, "r1": 0})
    decision = policy.decide(context(current=2, target=3), idle)
    assert (decision.desired, decision.reason) == (1, "scale_down_idle")
    busy = recorded(policy.queries, waiting={}, running={"r0": 8, "r1": 8}, kv={"r0": 0.1, "r1": 0.1})
    decision = policy.decide(context(current=2, target=3), busy)  # the two running ones are needed
    assert (decision.desired, decision.reason) == (2, "scale_down_pending")


def test_series_of_stopped_replicas_are_ignored(policy):
    # r9 was stopped; its last gauges (a long queue) must not keep the deployment scaled up
    results = recorded(policy.queries, waiting={"r0": 0, "r9": 40}, running={"r0": 0, "r9": 8}, kv={"r0": 0, "r9": 1.0})
    decision = policy.decide(context(current=2, replicas=["r0", "r1"]), results)
    assert decision.reason == "scale_down_idle"
    assert decision.inputs["replicas_reporting"] == 1


def test_stale_data_falls_back_to_ongoing_requests(policy):
    results = recorded(policy.queries, waiting={"r0": 9}, running={"r0": 8}, kv={"r0": 0.9}, age_s=120)
    decision = policy.decide(context(current=1, total_requests=20), results)
    assert (decision.desired, decision.reason) == (3, "fallback_ongoing_requests")  # ceil(20 / 8)
    assert decision.inputs["why"].startswith("stale_metrics")


def test_no_engine_metrics_falls_back(policy):
    decision = policy.decide(context(current=2, total_requests=3), {})
    assert (decision.desired, decision.reason, decision.inputs["why"]) == (1, "fallback_ongoing_requests", "no_engine_metrics")


def test_unreachable_prometheus_falls_back_and_says_so(caplog):
    policy = PrometheusPolicy(**{**KWARGS, "prometheus_address": f"http://127.0.0.1:{free_port()}"})
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        logging.getLogger("ray.serve").addHandler(caplog.handler)
        desired, state = policy(context(current=1, total_requests=17))
    assert desired == 3  # ceil(17 / 8)
    assert state["paliserve_reason"] == "fallback_ongoing_requests"
    assert "reason=fallback_ongoing_requests" in caplog.text and "prometheus_unreachable" in caplog.text


def test_every_decision_is_logged_with_inputs_when_it_changes(policy, caplog):
    busy = recorded(policy.queries, waiting={"r0": 3}, running={"r0": 8}, kv={"r0": 0.4})
    logging.getLogger("ray.serve").addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for _ in range(3):
            policy.recorder.record(policy.decide(context(current=1), busy))
    lines = [r.getMessage() for r in caplog.records if "paliserve autoscaler" in r.getMessage()]
    assert len(lines) == 1
    assert "desired=3 reason=scale_up_waiting_requests" in lines[0] and '"waiting": 3' in lines[0]


def test_serve_instantiates_the_class_from_the_plan_and_applies_bounds_and_delays():
    ref = prometheus_policy(MODEL, MODEL, ReplicaBounds(min=1, initial=1, max=3), 8, 500,
                            prometheus_address=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    policy = _resolve_policy_callable(AutoscalingPolicy(**ref.model_dump()))
    assert isinstance(policy, PrometheusPolicy) and ref.policy_function == POLICY_IMPORT_PATH
    wrapped = _apply_autoscaling_config(policy)
    # Prometheus is down here, so it sizes on ongoing requests: 100 in flight / 8 = 13, bounded to 3
    desired, _ = wrapped(context(current=1, total_requests=100))
    assert desired == 3
    # a downscale waits out the delay
    desired, state = wrapped(context(current=3, total_requests=0, downscale_delay_s=600))
    assert desired == 3


def test_the_planner_gives_deployments_with_room_to_scale_the_policy_with_the_tightest_slo():
    from autoscale.planner import plan
    from paliserve.spec import ClusterSpec
    from planspecs import one_tenant

    spec = one_tenant(concurrency=8, peak=200, ttft=2000.0)
    second = spec.tenants[0].model_copy(update={"name": "u", "slo": spec.tenants[0].slo.model_copy(update={"ttft_p95_ms": 700.0})})
    spec = ClusterSpec.model_validate({**spec.model_dump(), "tenants": [spec.tenants[0].model_dump(), second.model_dump()]})
    deployment = plan(spec).deployments[0]
    assert deployment.replicas.max > deployment.replicas.min
    policy = deployment.autoscaling.policy
    assert policy.policy_function == POLICY_IMPORT_PATH
    assert policy.policy_kwargs["ttft_slo_ms"] == 700.0
    assert policy.policy_kwargs["model_name"] == deployment.model_name
    assert (policy.policy_kwargs["min_replicas"], policy.policy_kwargs["max_replicas"]) == (
        deployment.replicas.min, deployment.replicas.max)
    assert deployment.serve_deployment()["autoscaling_config"]["policy"] == policy.model_dump()


def test_no_policy_where_there_is_nothing_to_scale():
    from autoscale.planner import plan
    from planspecs import one_tenant

    assert plan(one_tenant(concurrency=8)).deployments[0].autoscaling.policy is None
