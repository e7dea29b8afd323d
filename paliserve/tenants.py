"""`paliserve tenants apply|list`: change the tenants of a running local cluster in place.

A local cluster's ingress replicas read their tenants from a directory in the cluster's temp dir
(`PALISERVE_TENANTS_DIR`, the layout the Kubernetes manifests mount) and report what they serve
to a status directory (`PALISERVE_TENANTS_STATUS_DIR`), one file per replica
(serve/tenancy/registry.py). `apply` validates the new set against what the replicas serve,
writes the directory atomically, and returns once every live ingress replica reports the new
set's version. No engine restarts: nothing is redeployed.

Replicas on nodes that joined from other machines (`paliserve join`) share no directory with the
head: `up` and `apply` also publish the set in the cluster's GCS, which those replicas follow and
report to (serve/tenancy/registry.py, KvWatcher), and `apply` waits on their reports as well.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import psutil
import typer
import yaml

from paliserve.spec import Plan, TenantPlan

TENANTS_SUBDIR = "tenants"
STATUS_SUBDIR = "tenants-served"
APPLY_TIMEOUT_S = 30.0
REPLICA_PREFIX = "SERVE_REPLICA::"
SERVE_NAMESPACE = "serve"


class TenantsRefused(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# ---- where a local cluster keeps them ---------------------------------------------------------


def local_tenants_dir(temp_dir: str | Path) -> Path:
    return Path(temp_dir) / TENANTS_SUBDIR


def local_status_dir(temp_dir: str | Path) -> Path:
    return Path(temp_dir) / STATUS_SUBDIR


def local_tenant_env(temp_dir: str | Path) -> dict[str, str]:
    """What `paliserve up` gives the cluster's processes so that its gateways follow the directory."""
    from serve.tenancy.registry import STATUS_DIR_ENV, TENANTS_DIR_ENV

    return {TENANTS_DIR_ENV: str(local_tenants_dir(temp_dir)), STATUS_DIR_ENV: str(local_status_dir(temp_dir))}


def prepare_local_tenants(temp_dir: str | Path, plan: Plan) -> dict[str, str]:
    """Write the plan's tenants as the cluster's initial tenants directory; the environment for it."""
    from serve.tenancy.registry import runtime_tenants, write_tenant_dir

    write_tenant_dir(local_tenants_dir(temp_dir), runtime_tenants(plan.tenants))
    return local_tenant_env(temp_dir)


def publish_local_tenants(kv, plan: Plan) -> None:
    """Publish the plan's tenants in the cluster's GCS for replicas on joined nodes (`up`, once
    the head's GCS runs, before any node can join)."""
    from serve.tenancy.registry import publish_tenants, runtime_tenants

    publish_tenants(kv, runtime_tenants(plan.tenants))


# ---- what a file asks for ---------------------------------------------------------------------


def tenants_from_file(path: Path) -> list[TenantPlan]:
    """The tenants of a plan, or of a cluster spec turned into tenant plans by the planner (the
    same TenantPlans `paliserve plan` writes). Raises TenantsRefused naming the problem."""
    from pydantic import ValidationError

    from autoscale.errors import InfeasiblePlan
    from autoscale.loading import describe_validation_error, parse_spec
    from autoscale.planner import SpecError
    from autoscale.planner import plan as make_plan
    from serve.tenancy.registry import runtime_tenants

    try:
        text = Path(path).read_text()
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TenantsRefused([f"{path}: cannot read it: {exc}"]) from None
    try:
        if isinstance(data, dict) and "deployments" in data:
            tenants = Plan.model_validate(data).tenants
        elif isinstance(data, dict) and "models" in data:
            tenants = make_plan(parse_spec(text)).tenants
        else:
            raise TenantsRefused([f"{path}: expected a plan (with `deployments`) or a cluster spec (with `models`)"])
    except ValidationError as exc:
        raise TenantsRefused([f"{path}: {describe_validation_error(exc)}"]) from None
    except (SpecError, InfeasiblePlan) as exc:
        raise TenantsRefused([f"{path}: {exc}"]) from None
    return runtime_tenants(tenants)


# ---- what the replicas serve ------------------------------------------------------------------


def read_statuses(status_dir: Path) -> dict[str, dict]:
    """Replica id -> its last report (every replica that ever reported, dead ones included)."""
    statuses = {}
    for path in sorted(Path(status_dir).glob("*.json")):
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced: read again at the next look
        statuses[status["replica"]] = status
    return statuses


def live_replicas() -> set[str]:
    """Full ids of the Serve replicas alive in the connected cluster (their named actors)."""
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(REPLICA_PREFIX)}  # fmt: skip


def _deployment_prefix(replica: str) -> str:
    return replica.rsplit("#", 1)[0] + "#"


def all_statuses(status_dir: Path, kv=None) -> dict[str, dict]:
    """Reports in the status directory (the head's replicas) and, with `kv`, in the cluster's GCS
    (replicas on joined nodes)."""
    from serve.tenancy.registry import read_published_statuses

    return {**read_statuses(status_dir), **(read_published_statuses(kv) if kv is not None else {})}


def ingress_statuses(status_dir: Path, live: set[str], kv=None) -> tuple[dict[str, dict], set[str]]:
    """(reports of live ingress replicas, live ingress replicas that have not reported yet)."""
    statuses = all_statuses(status_dir, kv)
    prefixes = {_deployment_prefix(r) for r in statuses}
    ingress = {r for r in live if any(r.startswith(p) for p in prefixes)}
    return {r: s for r, s in statuses.items() if r in ingress}, ingress - statuses.keys()


def wait_until_served(status_dir: Path, version: str, live_fn, timeout_s: float, kv=None) -> tuple[int, list[str]]:
    """Poll until every live ingress replica reports `version`: (replicas, []) or, when one
    refused the set or time ran out, (replicas, problems)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reported, silent = ingress_statuses(status_dir, live_fn(), kv)
        lagging = sorted(r for r, s in reported.items() if s.get("version") != version) + sorted(silent)
        if reported and not lagging:
            return len(reported), []
        refusals = [p for s in reported.values() if s.get("version") != version for p in s.get("refused") or []]
        if refusals:
            return len(reported), sorted(set(refusals))
        if time.monotonic() > deadline:
            return len(reported), [f"not every ingress replica serves it after {timeout_s:g} s: {', '.join(lagging) or 'none reported'}"]
        time.sleep(0.2)


# ---- the commands -----------------------------------------------------------------------------


def _connected_cluster(state_file: Path, say):
    from serve.cluster import connect, read_state

    info = read_state(state_file)
    if info is None or not psutil.pid_exists(info.pid):
        say("paliserve is not running (no cluster started by `paliserve up` here)")
        raise typer.Exit(1)
    connect(info)
    return info


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def apply_tenants(path: Path, state_file: Path, out, err, timeout_s: float = APPLY_TIMEOUT_S) -> int:
    """The `tenants apply` command; returns its exit status (0 applied, 1 failed, 2 refused)."""
    from serve.cluster_kv import ClusterKV
    from serve.tenancy.registry import (ServedCatalog, TenantSetInvalid, diff_tenants, prune_published_statuses,
                                        publish_tenants, read_tenant_dir, tenant_set_version, validate_tenants,
                                        write_tenant_dir)  # fmt: skip

    try:
        new = tenants_from_file(path)
    except TenantsRefused as exc:
        for problem in exc.problems:
            err(f"refused, nothing changed: {problem}")
        return 2
    info = _connected_cluster(state_file, err)
    try:
        root, status_dir = local_tenants_dir(info.temp_dir), local_status_dir(info.temp_dir)
        kv = ClusterKV.here()
        live = live_replicas()
        prune_published_statuses(kv, live)  # joined nodes' replicas that are gone
        reported, _ = ingress_statuses(status_dir, live, kv)
        if not reported:
            err("no ingress replica reports its tenants: this cluster was not started by a paliserve "
                "that can change tenants live; nothing changed")
            return 1
        catalog = ServedCatalog.from_json(next(iter(reported.values()))["catalog"])
        try:
            current = read_tenant_dir(root) or []
        except TenantSetInvalid:
            current = []
        problems = validate_tenants(new, catalog, current)
        if problems:
            for problem in problems:
                err(f"refused, nothing changed: {problem}")
            return 2
        changes = diff_tenants(current, new)
        version = tenant_set_version(new)
        if not changes:
            out(f"no changes: the cluster's tenants are already these ({len(new)} tenants)")
            return 0
        started = time.monotonic()
        try:
            publish_tenants(kv, new)  # for the replicas on joined nodes; first, so a failure changes nothing
        except Exception as exc:
            err(f"not applied, nothing changed: could not publish the set in the cluster's GCS ({type(exc).__name__})")
            return 1
        write_tenant_dir(root, new)
        for change in changes:
            out(f"  {change.describe()}")
        replicas, problems = wait_until_served(status_dir, version, live_replicas, timeout_s, kv)
        if problems:
            write_tenant_dir(root, current)  # back to the set the replicas serve
            try:
                publish_tenants(kv, current)
            except Exception as exc:
                err(f"could not publish the previous set in the cluster's GCS again ({type(exc).__name__}): "
                    "replicas on joined nodes may serve the new one")  # fmt: skip
            for problem in problems:
                err(f"not applied, the previous tenants are restored: {problem}")
            return 1
        out(f"applied {len(changes)} change(s): every ingress replica ({replicas}) serves the new set "
            f"(version {version}) {time.monotonic() - started:.1f} s after it was written")
        return 0
    finally:
        _disconnect()


def list_tenants(state_file: Path, out, err, as_json: bool = False) -> int:
    from serve.cluster_kv import ClusterKV

    info = _connected_cluster(state_file, err)
    try:
        reported, silent = ingress_statuses(local_status_dir(info.temp_dir), live_replicas(), ClusterKV.here())
    finally:
        _disconnect()
    if not reported:
        err("no ingress replica reports its tenants")
        return 1
    versions = sorted({s["version"] for s in reported.values()})
    first = next(iter(reported.values()))
    if as_json:
        out(json.dumps({"versions": versions, "replicas": len(reported), "tenants": first["tenants"]}, indent=2))
        return 0
    note = "" if len(versions) == 1 else f" (replicas differ: versions {', '.join(versions)}; an apply is in progress)"
    out(f"tenant set {first['version']} from the {first['source']}, served by {len(reported)} ingress replica(s){note}")
    rows = [("tenant", "models", "adapters", "weight", "limits", "slo ttft/tpot p95 ms", "keys")]
    for t in first["tenants"]:
        limits = ", ".join(f"{k}={v}" for k, v in t["limits"].items()) or "-"
        slo = f"{t['slo']['ttft_p95_ms']:g}/{t['slo']['tpot_p95_ms']:g}" if t.get("slo") else "-"
        rows.append((t["name"], ",".join(t["models"]) or "-", ",".join(t["adapters"]) or "-", f"{t['weight']:g}",
                     limits, slo, str(t["keys"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def register(app: typer.Typer, state_file, say_error) -> None:
    tenants = typer.Typer(help="Change or show the tenants of the running local cluster (no restart).",
                          no_args_is_help=True)
    app.add_typer(tenants, name="tenants")

    @tenants.command("apply")
    def apply_command(
        file: Annotated[Path, typer.Argument(help="A cluster spec or a plan; only its tenants are applied.")],
        timeout: Annotated[float, typer.Option(help="Seconds to wait for every ingress replica.")] = APPLY_TIMEOUT_S,
    ) -> None:
        """Apply FILE's tenants (keys, models, adapters, weights, limits, SLOs) to the running
        cluster in place; prints what changed (never keys) and returns once every ingress replica
        serves them."""
        code = apply_tenants(file, state_file(), lambda line: print(line, flush=True), say_error, timeout)
        raise typer.Exit(code)

    @tenants.command("list")
    def list_command(
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    ) -> None:
        """The tenants the ingress replicas serve: models, adapters, weight, limits, SLO, number of keys."""
        raise typer.Exit(list_tenants(state_file(), lambda line: print(line, flush=True), say_error, as_json))

