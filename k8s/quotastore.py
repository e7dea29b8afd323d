"""The quota store on Kubernetes (serve/tenancy/quotas.py): every gateway replica's quotas in one
Redis. Without an address (`Settings.quota_store_url`), a one-replica Redis Deployment and its
Service are rendered, reachable from this cluster's Ray pods only (a NetworkPolicy), keeping no
data on disk (a restarted store starts the one-minute windows empty). Rendered whatever the plan's
limits: limits can be added later through the tenants ConfigMap without a re-render.

With an address, nothing is rendered and the gateways use that store; its password, if any, is
read from the Secret `<name>-quota-store` (key `password`), which the operator creates.
"""

from __future__ import annotations

from typing import Any

from serve.tenancy.quotas import PASSWORD_ENV, URL_ENV

from .redisstore import PORT, redis_documents, store_labels
from .settings import Settings

PASSWORD_KEY = "password"
ROLE = "quota-store"


def quota_store_name(settings: Settings) -> str:
    return f"{settings.name}-quota-store"


def quota_store_url(settings: Settings) -> str:
    return settings.quota_store_url or f"redis://{quota_store_name(settings)}:{PORT}/0"


def labels(settings: Settings) -> dict[str, str]:
    return store_labels(settings, ROLE)


def quota_store_env(settings: Settings) -> list[dict[str, Any]]:
    """What every Ray container needs to reach the store."""
    password = {"secretKeyRef": {"name": quota_store_name(settings), "key": PASSWORD_KEY, "optional": True}}
    return [{"name": URL_ENV, "value": quota_store_url(settings)}, {"name": PASSWORD_ENV, "valueFrom": password}]


def quota_store_documents(settings: Settings) -> dict[str, dict[str, Any]]:
    """File name -> document: the rendered store, or nothing when an address is given."""
    if settings.quota_store_url:
        return {}
    # no persistence: windows are a minute long; protected mode off because the NetworkPolicy
    # (Ray pods only) is the protection inside the cluster
    args = ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--port", str(PORT),
            "--maxmemory-policy", "noeviction"]
    return redis_documents(settings, ROLE, quota_store_name(settings), args)
