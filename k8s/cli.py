"""`paliserve k8s PLAN -o DIR`: render (and optionally validate) the Kubernetes manifests.

Exit codes: 0 rendered, 2 invalid spec or plan refused (nothing written), 3 infeasible spec,
4 rendered but validation failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from autoscale.errors import InfeasiblePlan
from autoscale.planner import SpecError

from .checks import PlanRefused
from .render import render, write_tree
from .settings import CPU_IMAGE, GPU_PRODUCTS, IMAGE, KUBERNETES_VERSION, Settings
from .sources import load_plan_or_spec
from .validate import ManifestInvalid, validate_tree

EXIT_INVALID = 2
EXIT_INFEASIBLE = 3
EXIT_VALIDATION = 4


def register(app: typer.Typer) -> None:
    app.command("k8s")(k8s_command)


def k8s_command(
    plan: Annotated[Path, typer.Argument(help="A plan (from `paliserve plan -o`) or a cluster spec to plan.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Directory for base/ and overlays/<overlay>/ (one overlay per run: render another plan into it for another).")],
    overlay: Annotated[Optional[str], typer.Option(help="Overlay name (default: prod with GPUs, dev without).")] = None,
    validate: Annotated[bool, typer.Option("--validate", help=f"Check the tree offline (Kubernetes {KUBERNETES_VERSION}, CRDs, promtool, kustomize).")] = False,
    image: Annotated[Optional[str], typer.Option(help=f"Container image with paliserve, Ray and vLLM (default: {IMAGE} for a plan with GPUs, {CPU_IMAGE} without: scripts/build_images.sh).")] = None,
    name: Annotated[str, typer.Option(help="RayService name and app.kubernetes.io/instance.")] = Settings.name,
    prometheus_url: Annotated[str, typer.Option(help="RAY_PROMETHEUS_HOST for the autoscaling policy.")] = Settings.prometheus_url,
    monitoring_namespace: Annotated[str, typer.Option(help="Namespace of Prometheus (may scrape the metrics port).")] = Settings.monitoring_namespace,
    operator_namespace: Annotated[str, typer.Option(help="Namespace of the KubeRay operator (may reach the dashboard).")] = Settings.operator_namespace,
    gpu_product: Annotated[Optional[list[str]], typer.Option(help="TYPE=LABEL: nvidia.com/gpu.product of a GPU type (repeatable).")] = None,
    tiny_model: Annotated[Optional[str], typer.Option(help="Dev: CPU workers build the tiny model at this path (sets PALISERVE_TINY_MODEL).")] = None,
    quota_store_url: Annotated[Optional[str], typer.Option(help="An existing Redis for the quotas (redis://HOST:PORT/DB; password from the Secret <name>-quota-store, key password); default: render one.")] = None,
    gcs_ft: Annotated[bool, typer.Option("--gcs-ft", help="GCS fault tolerance with a rendered Redis (<name>-gcs-store): a lost head pod comes back with the cluster's state.")] = False,
    gcs_redis_address: Annotated[Optional[str], typer.Option(help="GCS fault tolerance with an existing Redis (HOST:PORT; password from the Secret <name>-gcs-store, key password).")] = None,
) -> None:
    """Render Kubernetes manifests (KubeRay RayService, Secret, NetworkPolicy, monitoring) for a plan."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        serving = load_plan_or_spec(plan, tiny_model)
        gpus = any(d.device == "gpu" for d in serving.deployments)
        settings = Settings(name=name, image=image or (IMAGE if gpus else CPU_IMAGE), prometheus_url=prometheus_url,
                            monitoring_namespace=monitoring_namespace, operator_namespace=operator_namespace,
                            gpu_products={**GPU_PRODUCTS, **_pairs(gpu_product or [])}, tiny_model=tiny_model,
                            quota_store_url=quota_store_url, gcs_redis_address=gcs_redis_address,
                            gcs_store=gcs_ft)
        chosen = overlay or ("prod" if gpus else "dev")
        files = render(serving, chosen, settings, source=str(plan))
    except (PlanRefused, SpecError, ValueError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(EXIT_INVALID) from None
    except InfeasiblePlan as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(EXIT_INFEASIBLE) from None
    write_tree(files, out)
    console.print(f"wrote {out}/base and {out}/overlays/{chosen}: kubectl apply -k {out}/overlays/{chosen}")
    if validate:
        try:
            checked = validate_tree(out)
        except (ManifestInvalid, FileNotFoundError) as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(EXIT_VALIDATION) from None
        count = sum(len(docs) for docs in checked.values())
        console.print(f"valid: {count} documents in {', '.join(checked)} (Kubernetes {KUBERNETES_VERSION})")


def _pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--gpu-product: expected TYPE=LABEL, got {item!r}")
        pairs[key] = value
    return pairs
