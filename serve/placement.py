"""Where replicas are against where the plan's per-GPU layout puts them, node by node.

The layout numbers nodes 0, 1, …; Ray's nodes are addresses. Replicas land as the layout says
because each node offers the GPUs the plan's pool has per node (`ray start --num-gpus`, which
`paliserve up` and `paliserve join` pass) and each replica asks for its share of them: whole-GPU
replicas fill a node before the next, shares pack onto one GPU. The comparison is of the
per-node replica counts as multisets, so it does not depend on which address is which number.
"""

from __future__ import annotations

from collections import Counter

from paliserve.spec import Plan

REPLICA_ACTOR_PREFIX = "SERVE_REPLICA::"


def planned_per_node(plan: Plan) -> dict[int, Counter]:
    """Layout node -> replicas of each deployment on it (a tensor-parallel replica counts once)."""
    replicas: dict[int, set[tuple[str, int]]] = {}
    for gpu in plan.gpu_layout:
        replicas.setdefault(gpu.node, set()).update((slot.deployment, slot.replica) for slot in gpu.slots)
    return {node: Counter(name for name, _ in held) for node, held in sorted(replicas.items())}


def placed_per_node(app: str, deployments: set[str]) -> dict[str, Counter]:
    """Node address -> live replicas of each of `deployments` in Serve application `app` on it
    (read from Ray's GCS; needs a connected driver)."""
    from ray._private import state

    placed: dict[str, Counter] = {}
    for actor in state.actors(actor_state_name="ALIVE").values():
        name = actor.get("Name") or ""
        if not name.startswith(REPLICA_ACTOR_PREFIX):
            continue
        replica_app, deployment, _ = name[len(REPLICA_ACTOR_PREFIX) :].split("#", 2)
        if replica_app == app and deployment in deployments:
            placed.setdefault(actor["Address"]["IPAddress"], Counter())[deployment] += 1
    return placed


def _shape(per_node) -> list[tuple]:
    return sorted(tuple(sorted(counts.items())) for counts in per_node.values() if counts)


def placement_mismatch(planned: dict[int, Counter], placed: dict[str, Counter]) -> str | None:
    """Why the placement differs from the plan's layout, or None when the nodes hold what it says."""
    if _shape(planned) == _shape(placed):
        return None
    want = "; ".join(f"node {n}: {dict(c)}" for n, c in planned.items())
    have = "; ".join(f"{ip}: {dict(c)}" for ip, c in sorted(placed.items())) or "no replicas"
    return f"the plan's layout has {want}, the cluster has {have}"
