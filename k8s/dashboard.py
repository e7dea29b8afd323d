"""The Grafana dashboard (JSON in a ConfigMap the Grafana sidecar picks up by its label)."""

from __future__ import annotations

import json
from typing import Any

from . import metrics as m
from .settings import APP

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TENANT = 'tenant=~"$tenant"'

PANELS = [  # title, unit, [(expr, legend)]
    ("Requests/s by tenant and status", "reqps",
     [(f"sum by (tenant, status) (rate({m.REQUESTS}{{{TENANT}}}[{m.RATE_WINDOW}]))", "{{tenant}} {{status}}")]),
    ("TTFT p95 by tenant", "s",
     [(f"histogram_quantile(0.95, sum by (le, tenant) (rate({m.TTFT_BUCKET}{{{TENANT}}}[{m.RATE_WINDOW}])))",
       "{{tenant}}")]),
    ("Error ratio by tenant", "percentunit",
     [(f'sum by (tenant) (rate({m.REQUESTS}{{{TENANT},status=~"{m.ERROR_STATUS}"}}[{m.RATE_WINDOW}])) '
       f"/ sum by (tenant) (rate({m.REQUESTS}{{{TENANT}}}[{m.RATE_WINDOW}]))", "{{tenant}}")]),
    ("Refusals/s by tenant and reason (quota, auth, access, overload)", "reqps",
     [(f"sum by (tenant, reason) (rate({m.REJECTIONS}{{{TENANT}}}[{m.RATE_WINDOW}]))", "{{tenant}} {{reason}}")]),
    ("KV-cache usage by model", "percentunit",
     [(f"max by (model_name) ({m.KV_CACHE_USAGE})", "{{model_name}}")]),
    ("Requests waiting by model", "short",
     [(f"sum by (model_name) ({m.REQUESTS_WAITING})", "{{model_name}}")]),
    ("Engine TTFT p95 by model", "s",
     [(f"histogram_quantile(0.95, sum by (le, model_name) (rate({m.ENGINE_TTFT_BUCKET}[{m.RATE_WINDOW}])))",
       "{{model_name}}")]),
    # usage showback: what each tenant used (`paliserve usage` prints the same counters over a window)
    ("Usage: engine time by tenant and model (engine-seconds per second, apportioned by tokens)", "short",
     [(f"sum by (tenant, model) (rate({m.ENGINE_SECONDS}{{{TENANT}}}[{m.RATE_WINDOW}]))", "{{tenant}} {{model}}")]),
    ("Usage: tokens/s by tenant (prompt, of which image, and generated)", "short",
     [(f"sum by (tenant) (rate({m.PROMPT_TOKENS}{{{TENANT}}}[{m.RATE_WINDOW}]))", "{{tenant}} prompt"),
      (f"sum by (tenant) (rate({m.IMAGE_TOKENS}{{{TENANT}}}[{m.RATE_WINDOW}]))", "{{tenant}} image"),
      (f"sum by (tenant) (rate({m.GENERATION_TOKENS}{{{TENANT}}}[{m.RATE_WINDOW}]))", "{{tenant}} generated")]),
]


def dashboard() -> dict[str, Any]:
    return {
        "uid": APP,
        "title": "paliserve",
        "tags": [APP],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "tenant", "type": "query", "datasource": DATASOURCE, "multi": True, "includeAll": True,
             "query": f"label_values({m.REQUESTS}, tenant)", "refresh": 2},
        ]},
        "panels": [_panel(i, *panel) for i, panel in enumerate(PANELS)],
    }


def _panel(i: int, title: str, unit: str, queries: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(queries)],
    }


def dashboard_configmap() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{APP}-dashboard", "labels": {"grafana_dashboard": "1"}},
        "data": {f"{APP}.json": json.dumps(dashboard(), indent=2) + "\n"},
    }
