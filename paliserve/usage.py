"""`paliserve usage`: usage and cost per tenant and model over a window, from Prometheus.

Reads the gateway's per-tenant counters (`ray_paliserve_*`, `serve/tenancy/metrics.py`) and the
engines' busy time apportioned to tenants by tokens (`ray_paliserve_engine_seconds_total`,
`serve/tenancy/showback.py`) through Prometheus's HTTP API, and prices engine time with the
plan: GPU-hours = engine-hours x the GPUs one replica takes (a CPU replica counts as one device of
its type), cost = GPU-hours x the plan's `cost.per_device_hour` of the deployment's accelerator.
Engine time no request used (the plan's engine replicas up and healthy, less the time apportioned
to requests; counted every 15 s) is shown as tenant `(idle)`.

Counts are exact, not `increase()`'s extrapolation: per series, the last value in the window
less the value at its start, or the whole value for a series born inside it (a replica that
started in the window; Ray labels each process's series with its own `WorkerId`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import httpx
import typer
import yaml

from paliserve.spec import DeploymentPlan, Plan

SERIES = {
    "requests": 'ray_paliserve_requests_total{status="200"}',
    "prompt_tokens": "ray_paliserve_prompt_tokens_total",
    "image_tokens": "ray_paliserve_image_tokens_total",
    "generated_tokens": "ray_paliserve_generation_tokens_total",
    "engine_seconds": "ray_paliserve_engine_seconds_total",
}
REPLICAS = "ray_serve_deployment_replica_healthy"  # per Serve replica, from its start
REPLICA_STEP_S = 15  # resolution of the replica-time subquery
IDLE = "(idle)"
DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


class UsageError(Exception):
    pass


def window_increase(selector: str, window: str) -> str:
    """PromQL: how much each (tenant, model) counter grew within the last `window`, exactly."""
    last = f"last_over_time({selector}[{window}])"
    return f"sum by (tenant, model) (({last} - {selector} offset {window}) or {last})"


def replica_seconds(window: str) -> str:
    """PromQL: healthy replica-seconds per Serve deployment in the window (counted every REPLICA_STEP_S)."""
    return (f"sum by (deployment) (sum_over_time((count by (deployment) ({REPLICAS} == 1))"
            f"[{window}:{REPLICA_STEP_S}s])) * {REPLICA_STEP_S}")  # fmt: skip


@dataclass
class UsageRow:
    tenant: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    image_tokens: int = 0
    generated_tokens: int = 0
    engine_seconds: float = 0.0
    gpu_hours: float | None = None
    cost: float | None = None


@dataclass
class UsageReport:
    window: str
    prometheus: str
    currency: str = "USD"
    rows: list[UsageRow] = field(default_factory=list)

    def total(self) -> UsageRow:
        t = UsageRow("total", "")
        for r in self.rows:
            for name in ("requests", "prompt_tokens", "image_tokens", "generated_tokens", "engine_seconds"):
                setattr(t, name, getattr(t, name) + getattr(r, name))
        for name in ("gpu_hours", "cost"):
            values = [getattr(r, name) for r in self.rows]
            setattr(t, name, sum(values) if values and all(v is not None for v in values) else None)
        return t


def _query(prometheus: str, promql: str) -> list[dict]:
    try:
        reply = httpx.get(f"{prometheus.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=30)
    except httpx.HTTPError as exc:
        raise UsageError(f"Prometheus at {prometheus} is unreachable: {exc}") from None
    body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
    if reply.status_code != 200 or body.get("status") != "success":
        raise UsageError(f"Prometheus refused the query ({reply.status_code}): {body.get('error', reply.text[:200])}")
    return body["data"]["result"]


def _deployment(plan: Plan | None, model: str) -> DeploymentPlan | None:
    base = model.split(":", 1)[0]  # an adapter runs on its base model's engines
    return next((d for d in plan.deployments if d.model_name == base), None) if plan else None


def _price(plan: Plan | None, deployment: DeploymentPlan | None) -> tuple[float | None, float | None]:
    """(devices one replica takes, price of one device-hour) for a deployment of the plan."""
    if deployment is None:
        return None, None
    devices = deployment.gpus_per_replica if deployment.device == "gpu" else 1.0
    kind = deployment.accelerator or deployment.device
    return devices, plan.cost.per_device_hour.get(kind)


def collect(prometheus: str, window: str, plan: Plan | None = None, idle: bool = True) -> UsageReport:
    if not DURATION.match(window):
        raise UsageError(f"--since must be a Prometheus duration such as 30m, 24h or 7d; got {window!r}")
    report = UsageReport(window=window, prometheus=prometheus, currency=plan.cost.currency if plan else "USD")
    rows: dict[tuple[str, str], UsageRow] = {}
    for name, selector in SERIES.items():
        for sample in _query(prometheus, window_increase(selector, window)):
            labels = sample["metric"]
            key = (labels.get("tenant", ""), labels.get("model", ""))
            row = rows.setdefault(key, UsageRow(*key))
            value = max(0.0, float(sample["value"][1]))
            setattr(row, name, value if name == "engine_seconds" else int(round(value)))
    if idle and plan is not None:  # replicas are Serve deployments: the plan names their models
        busy: dict[str, float] = {}
        for row in rows.values():
            base = row.model.split(":", 1)[0]
            busy[base] = busy.get(base, 0.0) + row.engine_seconds
        models = {d.name: d.model_name for d in plan.deployments}  # not the separate Gateway's
        for sample in _query(prometheus, replica_seconds(window)):
            model = models.get(sample["metric"].get("deployment", ""))
            spare = float(sample["value"][1]) - busy.get(model, 0.0) if model else 0.0
            if spare > 0:
                rows[(IDLE, model)] = UsageRow(IDLE, model, engine_seconds=spare)
    for row in rows.values():
        devices, price = _price(plan, _deployment(plan, row.model))
        if devices is not None:
            row.gpu_hours = row.engine_seconds / 3600 * devices
            row.cost = row.gpu_hours * price if price is not None else None
    report.rows = sorted(rows.values(), key=lambda r: (r.tenant == IDLE, r.tenant, r.model))
    return report


COLUMNS = ["tenant", "model", "requests", "prompt_tokens", "image_tokens", "generated_tokens",
           "engine_seconds", "gpu_hours", "cost"]  # fmt: skip


def _cell(name: str, value) -> str:
    if value is None:
        return "-"
    if name == "engine_seconds":
        return f"{value:.3f}"
    if name in ("gpu_hours", "cost"):
        return f"{value:.6f}"
    return str(value)


def as_table(report: UsageReport) -> str:
    header = ["tenant", "model", "requests", "prompt tok", "image tok", "generated tok", "engine s", "GPU-hours",
              f"cost {report.currency}"]  # fmt: skip
    rows = [[_cell(c, getattr(r, c)) for c in COLUMNS] for r in [*report.rows, report.total()]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"usage over the last {report.window} (Prometheus {report.prometheus})", line(header),
           line(["-" * w for w in widths])]  # fmt: skip
    out += [line(r) for r in rows[:-1]] + [line(["-" * w for w in widths]), line(rows[-1])]
    return "\n".join(out)


def as_json(report: UsageReport) -> str:
    return json.dumps({**asdict(report), "total": asdict(report.total())}, indent=2)


def as_csv(report: UsageReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for r in [*report.rows, report.total()]:
        writer.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in COLUMNS])
    return buf.getvalue()


def _running_cluster(state_file: Path) -> tuple[str | None, Plan | None]:
    """The local cluster's Prometheus (and plan, if its state records one), as `paliserve down` finds it."""
    if not state_file.exists():
        return None, None
    state = json.loads(state_file.read_text())
    url = (state.get("prometheus") or {}).get("url")
    plan = state.get("plan")
    return url, Plan.model_validate(plan) if isinstance(plan, dict) else None


def register(app: typer.Typer, state_file) -> None:
    @app.command("usage")
    def usage(
        prometheus: Annotated[Optional[str], typer.Option(help="Prometheus base URL (default: the running local cluster's).")] = None,
        since: Annotated[str, typer.Option(help="Window ending now, as a Prometheus duration: 30m, 24h, 7d.")] = "24h",
        plan: Annotated[Optional[Path], typer.Option(help="The plan served, for GPU-hours and cost.")] = None,
        as_json_: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
        as_csv_: Annotated[bool, typer.Option("--csv", help="CSV instead of a table.")] = False,
        idle: Annotated[bool, typer.Option(help="Add each model's idle engine time as tenant (idle).")] = True,
    ) -> None:
        """Usage and cost per tenant and model: requests, prompt/image/generated tokens, engine time
        apportioned by tokens, GPU-hours and cost from the plan's prices."""
        from autoscale.loading import load_plan

        if as_json_ and as_csv_:
            typer.echo("error: --json and --csv exclude each other", err=True)
            raise typer.Exit(2)
        found_url, found_plan = _running_cluster(state_file())
        url = prometheus or found_url
        if not url:
            typer.echo("error: no --prometheus given and no running local cluster with one", err=True)
            raise typer.Exit(2)
        try:
            served = load_plan(plan) if plan else found_plan
            report = collect(url, since, served, idle=idle)
        except (UsageError, ValueError, OSError, yaml.YAMLError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(as_json(report) if as_json_ else as_csv(report) if as_csv_ else as_table(report))
