"""Broken plans are refused before anything is rendered, naming the field."""

from __future__ import annotations

import pytest
from k8s_plans import example_plan, gpu_deployment

from k8s.checks import PlanRefused, load_plan_data
from k8s.render import render
from paliserve.spec import Plan


def refusal(plan: Plan) -> str:
    with pytest.raises(PlanRefused) as caught:
        render(plan, "prod")
    return str(caught.value)


def test_negative_replicas_from_a_file():
    data = example_plan().model_dump(mode="json")
    data["deployments"][0]["replicas"]["min"] = -1
    with pytest.raises(PlanRefused, match=r"deployments\[0\]\.replicas\.min: .*greater than or equal to 0"):
        load_plan_data(data)


def test_negative_replicas_edited_in_memory():
    plan = example_plan()
    plan.deployments[1].replicas.max = -2
    assert "deployments[1].replicas.max" in refusal(plan)


def test_unknown_gpu_type():
    message = refusal(Plan(deployments=[gpu_deployment("a", 1.0, (1, 1, 1), accelerator="X100")]))
    assert "deployments[0] (a).accelerator: unknown GPU type 'X100'" in message
    assert "--gpu-product" in message


@pytest.mark.parametrize("share", [1.5, 2.5])
def test_fractional_share_above_one_gpu(share):
    message = refusal(Plan(deployments=[gpu_deployment("a", share, (1, 1, 1))]))
    assert f"deployments[0] (a).gpus_per_replica: {share} is above one GPU but not whole" in message


def test_gpu_deployment_without_gpus():
    message = refusal(Plan(deployments=[gpu_deployment("a", 0.0, (1, 1, 1))]))
    assert "deployments[0] (a).gpus_per_replica: a GPU deployment needs a share above 0" in message


def test_replica_sizes_that_do_not_nest():
    plan = Plan(deployments=[gpu_deployment("a", 2.0, (1, 1, 1)), gpu_deployment("b", 3.0, (1, 1, 1))])
    assert "L4 replicas of [2, 3] GPUs do not divide each other" in refusal(plan)


def test_serve_port_on_a_ray_port():
    plan = example_plan()
    plan.http.port = 8265
    assert "http.port: 8265 is Ray's dashboard port" in refusal(plan)


def test_a_key_instead_of_a_hash():
    plan = example_plan()
    plan.tenants[0].api_key_sha256 = ["sk-live-secret"]
    message = refusal(plan)
    assert "tenants[0] (acme).api_key_sha256[0]: not a SHA-256 hex digest" in message
    assert "sk-live-secret" not in message


def test_every_problem_is_listed():
    plan = Plan(deployments=[gpu_deployment("a", 1.5, (1, 1, 1), accelerator="X100")])
    with pytest.raises(PlanRefused) as caught:
        render(plan, "prod")
    assert len(caught.value.problems) == 2
