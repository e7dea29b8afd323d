"""Plans and rendered trees shared by the k8s tests (no engine, no Ray cluster)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from k8s.render import render
from k8s.settings import Settings
from k8s.sources import load_plan_or_spec
from paliserve.spec import ActorResources, DeploymentPlan, EngineArgs, Plan, ReplicaBounds

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cluster.yaml"
LOCAL_CPU = REPO / "paliserve" / "defaults" / "local-cpu.yaml"
TINY_MODEL = "/models/tiny-paligemma"


def example_plan() -> Plan:
    return load_plan_or_spec(EXAMPLE)


def cpu_plan() -> Plan:
    return load_plan_or_spec(LOCAL_CPU, tiny_model=TINY_MODEL)


def gpu_deployment(name: str, share: float, replicas: tuple[int, int, int], accelerator: str = "L4") -> DeploymentPlan:
    low, initial, high = replicas
    return DeploymentPlan(
        name=name, engine_args=EngineArgs(model=f"org/{name}", tensor_parallel_size=max(1, int(share))),
        device="gpu", accelerator=accelerator, gpus_per_replica=share,
        ray_actor_options=ActorResources(num_cpus=1, num_gpus=share),
        replicas=ReplicaBounds(min=low, initial=initial, max=high),
    )


def documents(files: dict[str, str], overlay: str) -> dict[str, dict]:
    """kind -> document of an overlay's own files; the quota store's as `quotastore/<kind>`
    (k8s/quotastore.py: its NetworkPolicy is the overlay's second)."""
    docs = {}
    for path, text in files.items():
        if path.startswith(f"overlays/{overlay}/") and not path.endswith("kustomization.yaml"):
            doc = yaml.safe_load(text)
            docs[f"quotastore/{doc['kind']}" if "/quotastore-" in path else doc["kind"]] = doc
    return docs


def render_docs(plan: Plan, overlay: str = "prod", settings: Settings = Settings()) -> dict[str, dict]:
    return documents(render(plan, overlay, settings), overlay)


def with_change(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the dotted `path` (integers index lists) set to `value`."""
    out = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out
