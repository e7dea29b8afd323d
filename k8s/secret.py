"""The tenants as the gateway reads them live from mounted files (serve/tenancy/registry.py):
the API key hashes as a Secret (one key per tenant, one SHA-256 digest a line) and the rest of
each tenant (models, adapters, weight, limits, SLO) as a ConfigMap. Both render the plan's
tenants, the initial set; `kubectl apply` of either changes the running set without a
RayService update (kubelet refreshes the mounted files)."""

from __future__ import annotations

from typing import Any

from paliserve.spec import Plan

from serve.tenancy.registry import CONFIG_FILE, config_text, key_file_text

from .rayservice import tenant_keys_secret_name, tenants_configmap_name
from .settings import Settings


def tenant_keys_secret(plan: Plan, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": tenant_keys_secret_name(settings), "labels": settings.labels},
        "type": "Opaque",
        "stringData": {t.name: key_file_text(t) for t in plan.tenants if t.api_key_sha256},
    }


def tenants_configmap(plan: Plan, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": tenants_configmap_name(settings), "labels": settings.labels},
        "data": {CONFIG_FILE: config_text(plan.tenants)},
    }
