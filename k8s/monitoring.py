"""Prometheus Operator objects: the PodMonitor for Ray's metrics and the SLO alert rules."""

from __future__ import annotations

from typing import Any

from paliserve.spec import Plan

from . import metrics as m
from .settings import APP, Settings


def pod_monitor() -> dict[str, Any]:
    """Scrapes every paliserve Ray pod (head and workers) on the `metrics` container port."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": f"{APP}-ray"},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def prometheus_rule(plan: Plan, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": f"{settings.name}-slo", "labels": settings.labels},
        "spec": {"groups": [
            {"name": f"{settings.name}-tenant-slo", "rules": _ttft_rules(plan)},
            {"name": f"{settings.name}-serving", "rules": _serving_rules()},
        ]},
    }


def _ttft_rules(plan: Plan) -> list[dict[str, Any]]:
    """One rule per tenant with an SLO, each with the tenant's own threshold."""
    rules = []
    for tenant in plan.tenants:
        if tenant.slo is None:
            continue
        seconds = tenant.slo.ttft_p95_ms / 1000
        expr = (f'histogram_quantile(0.95, sum by (le, tenant) '
                f'(rate({m.TTFT_BUCKET}{{tenant="{tenant.name}"}}[{m.RATE_WINDOW}]))) > {seconds:g}')
        rules.append(_alert(
            "PaliserveTenantTTFTAboveSLO", expr, m.TTFT_FOR, "warning", {"tenant": tenant.name},
            f"Tenant {tenant.name}: TTFT p95 above its SLO of {tenant.slo.ttft_p95_ms:g} ms",
            "TTFT p95 over " + m.RATE_WINDOW + " is {{ $value | humanizeDuration }}.",
        ))
    return rules


def _serving_rules() -> list[dict[str, Any]]:
    errors = (f'sum by (tenant) (rate({m.REQUESTS}{{status=~"{m.ERROR_STATUS}"}}[{m.RATE_WINDOW}])) '
              f'/ sum by (tenant) (rate({m.REQUESTS}[{m.RATE_WINDOW}])) > {m.ERROR_RATIO:g}')
    quota = (f'sum by (tenant) (rate({m.REJECTIONS}{{reason=~"{"|".join(m.QUOTA_REASONS)}"}}[{m.RATE_WINDOW}])) '
             f'/ sum by (tenant) (rate({m.REQUESTS}[{m.RATE_WINDOW}])) > {m.QUOTA_REJECTED_RATIO:g}')
    return [
        _alert("PaliserveKVCacheHigh", f"max by (model_name) ({m.KV_CACHE_USAGE}) > {m.KV_CACHE_HIGH:g}",
               m.KV_CACHE_FOR, "warning", {},
               "Model {{ $labels.model_name }}: KV cache above " + f"{m.KV_CACHE_HIGH:.0%}",
               "KV-cache usage is {{ $value | humanizePercentage }}; requests queue and get preempted."),
        _alert("PaliserveErrorRateHigh", errors, m.ERROR_FOR, "critical", {},
               "Tenant {{ $labels.tenant }}: error rate above " + f"{m.ERROR_RATIO:.0%}",
               "{{ $value | humanizePercentage }} of requests fail."),
        _alert("PaliserveQuotaRejections", quota, m.QUOTA_REJECTED_FOR, "info", {},
               "Tenant {{ $labels.tenant }}: over " + f"{m.QUOTA_REJECTED_RATIO:.0%} of requests refused by its quota",
               "{{ $value | humanizePercentage }} of the tenant's requests got 429 from its quota ("
               + ", ".join(m.QUOTA_REASONS) + ") for " + m.QUOTA_REJECTED_FOR + ": its limits are "
               "below its traffic, or its client retries without waiting for Retry-After. Refusals for "
               "authentication, access, unknown models or overload are not counted."),
    ]


def _alert(name: str, expr: str, for_: str, severity: str, labels: dict[str, str],
           summary: str, description: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity, **labels},
            "annotations": {"summary": summary, "description": description}}
