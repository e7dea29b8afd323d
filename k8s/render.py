"""A plan -> a kustomize tree: `base/` (plan-independent) and `overlays/<name>/` (this plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paliserve.spec import Plan

from . import yamlio
from .checks import check_plan
from .dashboard import dashboard_configmap
from .gcsstore import gcs_store_documents
from .monitoring import pod_monitor, prometheus_rule
from .network import network_policy
from .quotastore import quota_store_documents
from .rayservice import rayservice
from .secret import tenant_keys_secret, tenants_configmap
from .settings import APP, Settings
from .workers import worker_groups

KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
ARITHMETIC = """\
Worker groups (one per GPU type) from the plan's replica bounds:
  GPUs for n replicas of share s: ceil(n / floor(1/s)) if s < 1, else n * s;
  GPUs per pod P: the largest whole-GPU replica on that type (1 if all replicas share GPUs);
  minReplicas / replicas / maxReplicas = ceil(sum of GPUs at the min / initial / max bound / P).
  CPU replicas take one pod each. Each pod adds 1 CPU for the gateway (the head runs no replicas).
"""


def render(plan: Plan, overlay: str, settings: Settings = Settings(), source: str = "a plan") -> dict[str, str]:
    """Relative path -> file text. Raises PlanRefused before rendering anything."""
    plan = check_plan(plan, settings)
    groups = worker_groups(plan)
    header = f"Rendered by `paliserve k8s` from {source}: change the spec or plan and re-render.\n"
    base = {"podmonitor.yaml": pod_monitor(), "dashboard.yaml": dashboard_configmap()}
    own = {
        "rayservice.yaml": rayservice(plan, groups, settings),
        "secret.yaml": tenant_keys_secret(plan, settings),
        "tenants.yaml": tenants_configmap(plan, settings),
        "networkpolicy.yaml": network_policy(plan, settings),
        "prometheusrule.yaml": prometheus_rule(plan, settings),
        **quota_store_documents(settings),
        **gcs_store_documents(settings),
    }
    comments = {"rayservice.yaml": header + ARITHMETIC + "".join(f"  {g.explain()}\n" for g in groups)}
    files = {f"base/{name}": yamlio.dump(doc, "Rendered by `paliserve k8s`; the same for every plan.")
             for name, doc in base.items()}
    files["base/kustomization.yaml"] = yamlio.dump({**KUSTOMIZATION, "resources": list(base)})
    files |= {f"overlays/{overlay}/{name}": yamlio.dump(doc, comments.get(name, header))
              for name, doc in own.items()}
    files[f"overlays/{overlay}/kustomization.yaml"] = yamlio.dump(_overlay(list(own), settings), header)
    return files


def _overlay(resources: list[str], settings: Settings) -> dict[str, Any]:
    return {
        **KUSTOMIZATION,
        "resources": ["../../base", *resources],
        "labels": [{"pairs": {"app.kubernetes.io/part-of": APP}}],
        "images": [{"name": APP, **_image(settings.image)}],
    }


def _image(image: str) -> dict[str, str]:
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"newName": name, "digest": digest}
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return {"newName": image}
    return {"newName": name, "newTag": tag}


def write_tree(files: dict[str, str], out_dir: Path) -> list[Path]:
    written = []
    for relative, text in sorted(files.items()):
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
