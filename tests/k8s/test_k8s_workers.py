"""Worker group arithmetic: GPUs from replica bounds and shares, pods from GPUs per pod."""

from __future__ import annotations

import pytest
from k8s_plans import example_plan, gpu_deployment, render_docs

from k8s.workers import gpus_needed, worker_groups
from paliserve.spec import Plan


@pytest.mark.parametrize(("replicas", "share", "gpus"), [
    (3, 0.5, 2), (4, 0.5, 2), (1, 0.5, 1), (0, 0.5, 0), (5, 0.4, 3), (3, 1 / 3, 1), (3, 1.0, 3), (2, 2.0, 4),
])
def test_gpus_needed(replicas, share, gpus):
    assert gpus_needed(replicas, share) == gpus


def test_fractional_replicas_share_gpus():
    plan = Plan(deployments=[gpu_deployment("half", 0.5, (1, 2, 3))])
    (group,) = worker_groups(plan)
    assert (group.gpus_per_pod, group.gpus) == (1, {"min": 1, "initial": 1, "max": 2})
    spec = render_docs(plan)["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (spec["minReplicas"], spec["replicas"], spec["maxReplicas"]) == (1, 1, 2)
    assert spec["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_tensor_parallel_replicas_set_gpus_per_pod():
    plan = Plan(deployments=[gpu_deployment("tp2", 2.0, (1, 1, 3)), gpu_deployment("one", 1.0, (0, 1, 2))])
    (group,) = worker_groups(plan)
    assert group.gpus_per_pod == 2
    assert group.gpus == {"min": 2, "initial": 3, "max": 8}
    assert group.pods == {"min": 1, "initial": 2, "max": 4}


def test_one_group_per_gpu_type():
    plan = Plan(deployments=[gpu_deployment("a", 1.0, (1, 1, 2), "L4"), gpu_deployment("b", 1.0, (1, 1, 1), "H100-SXM")])
    groups = render_docs(plan)["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["gpu-l4", "gpu-h100-sxm"]
    products = [g["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] for g in groups]
    assert products == ["NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"]


def test_example_plan_groups_match_its_gpu_count():
    plan = example_plan()
    groups = worker_groups(plan)
    assert sum(g.gpus["max"] for g in groups) >= plan.gpus
    assert all(g.pods["max"] * g.gpus_per_pod >= g.gpus["max"] for g in groups)
