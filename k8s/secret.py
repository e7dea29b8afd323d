"""The tenants' API key hashes as a Secret: one key per tenant, one SHA-256 digest a line."""

from __future__ import annotations

from typing import Any

from paliserve.spec import Plan

from .rayservice import tenant_keys_secret_name
from .settings import Settings


def tenant_keys_secret(plan: Plan, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": tenant_keys_secret_name(settings), "labels": settings.labels},
        "type": "Opaque",
        "stringData": {t.name: "".join(f"{h}\n" for h in t.api_key_sha256)
                       for t in plan.tenants if t.api_key_sha256},
    }
