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

from .settings import APP, Settings

PORT = 6379
PASSWORD_KEY = "password"


def quota_store_name(settings: Settings) -> str:
    return f"{settings.name}-quota-store"


def quota_store_url(settings: Settings) -> str:
    return settings.quota_store_url or f"redis://{quota_store_name(settings)}:{PORT}/0"


def labels(settings: Settings) -> dict[str, str]:
    """Not the Ray pods' labels: their NetworkPolicy and PodMonitor must not select the store."""
    return {"app.kubernetes.io/name": f"{APP}-quota-store", "app.kubernetes.io/instance": settings.name}


def quota_store_env(settings: Settings) -> list[dict[str, Any]]:
    """What every Ray container needs to reach the store."""
    password = {"secretKeyRef": {"name": quota_store_name(settings), "key": PASSWORD_KEY, "optional": True}}
    return [{"name": URL_ENV, "value": quota_store_url(settings)}, {"name": PASSWORD_ENV, "valueFrom": password}]


def quota_store_documents(settings: Settings) -> dict[str, dict[str, Any]]:
    """File name -> document: the rendered store, or nothing when an address is given."""
    if settings.quota_store_url:
        return {}
    return {
        "quotastore-deployment.yaml": _deployment(settings),
        "quotastore-service.yaml": _service(settings),
        "quotastore-networkpolicy.yaml": _network_policy(settings),
    }


def _deployment(settings: Settings) -> dict[str, Any]:
    container = {
        "name": "redis",
        "image": settings.quota_store_image,
        # no persistence: windows are a minute long; protected mode off because the NetworkPolicy
        # (Ray pods only) is the protection inside the cluster
        "args": ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--port", str(PORT),
                 "--maxmemory-policy", "noeviction"],
        "ports": [{"name": "redis", "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 5},
        "livenessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 10},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": quota_store_name(settings), "labels": labels(settings)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels(settings)},
            "template": {"metadata": {"labels": labels(settings)}, "spec": {"containers": [container]}},
        },
    }


def _service(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": quota_store_name(settings), "labels": labels(settings)},
        "spec": {"type": "ClusterIP", "selector": labels(settings),
                 "ports": [{"name": "redis", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]},
    }


def _network_policy(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": quota_store_name(settings), "labels": labels(settings)},
        "spec": {
            "podSelector": {"matchLabels": labels(settings)},
            "policyTypes": ["Ingress"],
            # this Ray cluster's pods (the gateways), on the Redis port; nothing else
            "ingress": [{"from": [{"podSelector": {"matchLabels": settings.labels}}],
                         "ports": [{"protocol": "TCP", "port": PORT}]}],
        },
    }
