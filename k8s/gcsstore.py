"""GCS fault tolerance (KubeRay's `gcsFaultToleranceOptions`): Ray's GCS keeps its tables in an
external Redis, so a head pod that dies comes back with the cluster's actors, placement groups and
Serve's state, while the worker pods and their replicas keep serving (their raylets wait for the
new GCS up to RAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S, which KubeRay sets to 600 s on workers).

Two ways, like the quota store (k8s/quotastore.py):
- an operator-given address (`Settings.gcs_redis_address`, HOST:PORT or redis://...): nothing is
  rendered; the password, if any, is read from the Secret `<name>-gcs-store` (key `password`,
  optional), which the operator creates;
- `Settings.gcs_store`: a one-replica Redis Deployment, Service and NetworkPolicy (Ray pods only)
  are rendered, with append-only persistence on an emptyDir: it outlives a head pod, not its own
  pod (use an operator-given, replicated Redis for that).
"""

from __future__ import annotations

from typing import Any

from .quotastore import PORT
from .settings import APP, Settings

PASSWORD_KEY = "password"


def gcs_store_name(settings: Settings) -> str:
    return f"{settings.name}-gcs-store"


def labels(settings: Settings) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"{APP}-gcs-store", "app.kubernetes.io/instance": settings.name}


def gcs_fault_tolerance(settings: Settings) -> dict[str, Any] | None:
    """The RayCluster's `gcsFaultToleranceOptions`, or None when GCS fault tolerance is off."""
    if settings.gcs_redis_address:
        password = {"secretKeyRef": {"name": gcs_store_name(settings), "key": PASSWORD_KEY, "optional": True}}
        return {"redisAddress": settings.gcs_redis_address, "redisPassword": {"valueFrom": password}}
    if settings.gcs_store:
        return {"redisAddress": f"{gcs_store_name(settings)}:{PORT}"}
    return None


def gcs_store_documents(settings: Settings) -> dict[str, dict[str, Any]]:
    if settings.gcs_redis_address or not settings.gcs_store:
        return {}
    return {
        "gcsstore-deployment.yaml": _deployment(settings),
        "gcsstore-service.yaml": _service(settings),
        "gcsstore-networkpolicy.yaml": _network_policy(settings),
    }


def _deployment(settings: Settings) -> dict[str, Any]:
    container = {
        "name": "redis",
        "image": settings.quota_store_image,
        # the GCS's tables must survive: append-only file on the pod's volume; no password,
        # the NetworkPolicy (Ray pods only) is the protection inside the cluster
        "args": ["--appendonly", "yes", "--dir", "/data", "--protected-mode", "no", "--port", str(PORT)],
        "ports": [{"name": "redis", "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 5},
        "livenessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": gcs_store_name(settings), "labels": labels(settings)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels(settings)},
            "template": {"metadata": {"labels": labels(settings)},
                         "spec": {"containers": [container], "volumes": [{"name": "data", "emptyDir": {}}]}},
        },
    }


def _service(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": gcs_store_name(settings), "labels": labels(settings)},
        "spec": {"type": "ClusterIP", "selector": labels(settings),
                 "ports": [{"name": "redis", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]},
    }


def _network_policy(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": gcs_store_name(settings), "labels": labels(settings)},
        "spec": {
            "podSelector": {"matchLabels": labels(settings)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": settings.labels}}],
                         "ports": [{"protocol": "TCP", "port": PORT}]}],
        },
    }
