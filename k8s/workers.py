"""Worker groups: one per accelerator type, sized from the plan's replica bounds.

Arithmetic (also written into the rendered RayService as a comment):
- a replica with a GPU share s < 1 packs floor(1/s) replicas onto one GPU, so n replicas need
  ceil(n / floor(1/s)) GPUs (3 replicas at 0.5 -> 2 GPUs); a replica with s >= 1 takes s whole GPUs;
- a worker pod holds P GPUs, P = the largest whole-GPU replica in the group (1 if all share);
- pods at a bound = ceil(sum over the group's deployments of GPUs at that bound / P), for the
  bounds min, initial and max (KubeRay minReplicas, replicas, maxReplicas). Deployments are not
  packed together on one GPU, so this never undercounts; CPU replicas take one pod each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paliserve.spec import DeploymentPlan, Plan

BOUNDS = ("min", "initial", "max")
GATEWAY_CPUS = 1  # the head advertises no CPUs, so the gateway replica lands on a worker


def _replicas_per_pod(d: DeploymentPlan, gpus_per_pod: int) -> int:
    if d.gpus_per_replica < 1:
        return gpus_per_pod * math.floor(1 / d.gpus_per_replica + 1e-9)
    return gpus_per_pod // round(d.gpus_per_replica)


@dataclass(frozen=True)
class WorkerGroup:
    name: str  # KubeRay groupName
    accelerator: str | None  # catalog GPU type; None for the CPU group
    gpus_per_pod: int
    cpus_per_pod: int
    pods: dict[str, int]  # bound -> worker pods
    gpus: dict[str, int]  # bound -> GPUs
    deployments: tuple[str, ...]

    def explain(self) -> str:
        counts = ", ".join(f"{b} {self.pods[b]} pods ({self.gpus[b]} GPUs)" for b in BOUNDS)
        if self.accelerator is None:
            return f"{self.name}: one pod per CPU replica of {', '.join(self.deployments)}: {counts}"
        return (f"{self.name}: {self.gpus_per_pod} {self.accelerator} per pod for "
                f"{', '.join(self.deployments)}: {counts}")


def gpus_needed(replicas: int, share: float) -> int:
    """Whole GPUs that `replicas` replicas of `share` GPUs each occupy."""
    if replicas == 0 or share == 0:
        return 0
    if share < 1:
        return math.ceil(replicas / math.floor(1 / share + 1e-9))
    return replicas * round(share)


def worker_groups(plan: Plan) -> list[WorkerGroup]:
    """The plan's deployments grouped by accelerator, in first-seen order; CPU last."""
    by_type: dict[str | None, list[DeploymentPlan]] = {}
    for d in plan.deployments:
        by_type.setdefault(d.accelerator if d.device == "gpu" else None, []).append(d)
    groups = [_gpu_group(t, ds) for t, ds in by_type.items() if t is not None]
    if None in by_type:
        groups.append(_cpu_group(by_type[None]))
    return groups


def _gpu_group(accelerator: str, deployments: list[DeploymentPlan]) -> WorkerGroup:
    per_pod = max([1] + [round(d.gpus_per_replica) for d in deployments if d.gpus_per_replica >= 1])
    gpus = {b: sum(gpus_needed(getattr(d.replicas, b), d.gpus_per_replica) for d in deployments)
            for b in BOUNDS}
    cpus = math.ceil(max(_replicas_per_pod(d, per_pod) * d.ray_actor_options.num_cpus for d in deployments))
    cpus += GATEWAY_CPUS
    return WorkerGroup(
        name=group_name(accelerator), accelerator=accelerator, gpus_per_pod=per_pod, cpus_per_pod=cpus,
        pods={b: math.ceil(g / per_pod) for b, g in gpus.items()}, gpus=gpus,
        deployments=tuple(d.name for d in deployments),
    )


def _cpu_group(deployments: list[DeploymentPlan]) -> WorkerGroup:
    cpus = math.ceil(max(d.ray_actor_options.num_cpus for d in deployments)) + GATEWAY_CPUS
    pods = {b: sum(getattr(d.replicas, b) for d in deployments) for b in BOUNDS}
    return WorkerGroup(name="cpu", accelerator=None, gpus_per_pod=0, cpus_per_pod=cpus, pods=pods,
                       gpus=dict.fromkeys(BOUNDS, 0), deployments=tuple(d.name for d in deployments))


def group_name(accelerator: str) -> str:
    return "gpu-" + accelerator.lower().replace("_", "-").replace(".", "-")
