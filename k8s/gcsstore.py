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

from .redisstore import PORT, redis_documents, store_labels
from .settings import Settings

PASSWORD_KEY = "password"
ROLE = "gcs-store"


def gcs_store_name(settings: Settings) -> str:
    return f"{settings.name}-gcs-store"


def labels(settings: Settings) -> dict[str, str]:
    return store_labels(settings, ROLE)


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
    # the GCS's tables must survive: append-only file on the pod's volume; no password, the
    # NetworkPolicy (Ray pods only) is the protection inside the cluster
    args = ["--appendonly", "yes", "--dir", "/data", "--protected-mode", "no", "--port", str(PORT)]
    return redis_documents(settings, ROLE, gcs_store_name(settings), args, data_dir="/data")
