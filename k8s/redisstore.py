"""A one-replica Redis on Kubernetes: Deployment, ClusterIP Service and a NetworkPolicy that
lets only this cluster's Ray pods reach it. The quota store (k8s/quotastore.py) and the GCS's
store (k8s/gcsstore.py) are two of these, with their own names, labels and Redis arguments."""

from __future__ import annotations

from typing import Any

from .settings import APP, Settings

PORT = 6379


def store_labels(settings: Settings, role: str) -> dict[str, str]:
    """Not the Ray pods' labels: their NetworkPolicy and PodMonitor must not select a store."""
    return {"app.kubernetes.io/name": f"{APP}-{role}", "app.kubernetes.io/instance": settings.name}


def redis_documents(settings: Settings, role: str, name: str, args: list[str], data_dir: str | None = None
                    ) -> dict[str, dict[str, Any]]:
    """File name -> document for the store `role` (e.g. quota-store) named `name`; `data_dir`: an
    emptyDir mounted there for Redis's files (outlives Ray's pods, not the store's own)."""
    prefix = role.replace("-", "")
    labels = store_labels(settings, role)
    container = {
        "name": "redis",
        "image": settings.quota_store_image,
        "args": args,
        "ports": [{"name": "redis", "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 5},
        "livenessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 10},
    }
    pod: dict[str, Any] = {"containers": [container]}
    if data_dir is not None:
        container["volumeMounts"] = [{"name": "data", "mountPath": data_dir}]
        pod["volumes"] = [{"name": "data", "emptyDir": {}}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "redis", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]},
    }
    network_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress"],
            # this Ray cluster's pods, on the Redis port; nothing else
            "ingress": [{"from": [{"podSelector": {"matchLabels": settings.labels}}],
                         "ports": [{"protocol": "TCP", "port": PORT}]}],
        },
    }
    return {f"{prefix}-deployment.yaml": deployment, f"{prefix}-service.yaml": service,
            f"{prefix}-networkpolicy.yaml": network_policy}
