"""The RayService: the plan's Serve config on a KubeRay cluster with one worker group per GPU type."""

from __future__ import annotations

import posixpath
from typing import Any

from paliserve.spec import HttpOptions, Plan
from serve.cluster import SERVE_THROUGHPUT_ENV
from serve.ingress import HAPROXY_MODE
from serve.tenancy.registry import CONFIG_DIR, KEYS_DIR, TENANTS_DIR_ENV

from . import yamlio
from .gcsstore import gcs_fault_tolerance
from .quotastore import quota_store_env
from .settings import (APP, CLIENT_PORT, DASHBOARD_PORT, GCS_PORT, METRICS_PORT, RAY_VERSION,
                       Settings)
from .workers import WorkerGroup

TENANTS_ROOT = "/etc/paliserve"  # PALISERVE_TENANTS_DIR of every Ray container
TENANT_KEYS_DIR = f"{TENANTS_ROOT}/{KEYS_DIR}"  # the Secret
TENANTS_CONFIG_DIR = f"{TENANTS_ROOT}/{CONFIG_DIR}"  # the ConfigMap
GPU = "nvidia.com/gpu"


def tenant_keys_secret_name(settings: Settings) -> str:
    return f"{settings.name}-tenant-keys"


def tenants_configmap_name(settings: Settings) -> str:
    return f"{settings.name}-tenants"


def serve_config_text(plan: Plan) -> str:
    """The plan's Serve config; the proxy listens on every pod address, not the plan's host."""
    in_pod = plan.model_copy(update={"http": HttpOptions(host="0.0.0.0", port=plan.http.port)})
    return yamlio.dump(in_pod.serve_config())


def rayservice(plan: Plan, groups: list[WorkerGroup], settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": settings.name, "labels": settings.labels},
        "spec": {
            "serveConfigV2": serve_config_text(plan),
            # the head (no CPUs, no replicas) takes no client traffic: its loss and restart
            # (GCS fault tolerance) never reach a client through its proxy
            **({"excludeHeadPodFromServeSvc": True} if gcs_fault_tolerance(settings) else {}),
            "serveService": {
                "metadata": {"name": f"{settings.name}-serve", "labels": settings.labels},
                "spec": {"type": "ClusterIP",
                         "ports": [{"name": "serve", "port": plan.http.port,
                                    "targetPort": plan.http.port, "protocol": "TCP"}]},
            },
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                # KubeRay generates a random token Secret and sets RAY_AUTH_MODE=token and
                # RAY_AUTH_TOKEN in every Ray container, the autoscaler's included.
                "authOptions": {"mode": "token"},
                **({"gcsFaultToleranceOptions": ft} if (ft := gcs_fault_tolerance(settings)) else {}),
                "headGroupSpec": _head(plan, settings),
                "workerGroupSpecs": [_worker(plan, group, settings) for group in groups],
            },
        },
    }


def _head(plan: Plan, settings: Settings) -> dict[str, Any]:
    ports = [("gcs-server", GCS_PORT), ("dashboard", DASHBOARD_PORT), ("client", CLIENT_PORT),
             ("serve", plan.http.port), ("metrics", METRICS_PORT)]
    container = _container("ray-head", ports, plan, settings,
                           {"cpu": str(settings.head_cpus), "memory": f"{settings.head_memory_gib}Gi"})
    return {
        # No CPUs or GPUs for Ray tasks: engines and the gateway run on workers. The dashboard
        # listens on the pod address (KubeRay's operator deploys through it); the
        # NetworkPolicy keeps it, GCS and the client port inside the Ray cluster.
        "rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0",
                           "metrics-export-port": str(METRICS_PORT)},
        "template": {
            "metadata": {"labels": {**settings.labels, "app.kubernetes.io/component": "ray-head"}},
            "spec": {"containers": [container], "volumes": _volumes(settings)},
        },
    }


def _worker(plan: Plan, group: WorkerGroup, settings: Settings) -> dict[str, Any]:
    if group.accelerator is None:
        memory = settings.cpu_worker_memory_gib
    else:
        memory = settings.worker_memory_gib_per_gpu * group.gpus_per_pod
    limits = {"cpu": str(group.cpus_per_pod), "memory": f"{memory}Gi"}
    if group.gpus_per_pod:
        limits[GPU] = str(group.gpus_per_pod)
    container = _container("ray-worker", [("serve", plan.http.port), ("metrics", METRICS_PORT)],
                           plan, settings, limits)
    spec: dict[str, Any] = {"containers": [container], "volumes": _volumes(settings)}
    if group.accelerator is not None:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": settings.gpu_products[group.accelerator]}
        spec["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    elif settings.tiny_model:
        _add_tiny_model(spec, settings)
    return {
        "groupName": group.name,
        "replicas": group.pods["initial"],
        "minReplicas": group.pods["min"],
        "maxReplicas": group.pods["max"],
        "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
        "template": {
            "metadata": {"labels": {**settings.labels, "app.kubernetes.io/component": "ray-worker"}},
            "spec": spec,
        },
    }


def _container(name: str, ports: list[tuple[str, int]], plan: Plan, settings: Settings,
               limits: dict[str, str]) -> dict[str, Any]:
    requests = {k: v for k, v in limits.items() if k != GPU}
    return {
        "name": name,
        "image": APP,  # the overlay's `images:` entry names the real image
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports],
        "env": [
            # vLLM binds its engine sockets to this address: the pod's, never loopback here.
            {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "RAY_PROMETHEUS_HOST", "value": settings.prometheus_url},
            # HAProxy (bundled with ray[serve] on Linux) in front of the ingress replicas instead of
            # Serve's Python proxy: see serve/ingress.py
            *({"name": k, "value": v} for k, v in HAPROXY_MODE.items()),
            # the Serve settings `paliserve up` runs with (serve/cluster.py)
            *({"name": k, "value": v} for k, v in SERVE_THROUGHPUT_ENV.items()),
            # the gateway reads the tenants from the mounted Secret and ConfigMap and follows
            # their changes (no subPath mounts: kubelet updates only whole-volume mounts)
            {"name": TENANTS_DIR_ENV, "value": TENANTS_ROOT},
            # every gateway replica's quotas live in one Redis (k8s/quotastore.py)
            *quota_store_env(settings),
        ],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [
            {"name": "tenant-keys", "mountPath": TENANT_KEYS_DIR, "readOnly": True},
            {"name": "tenants", "mountPath": TENANTS_CONFIG_DIR, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }


def _volumes(settings: Settings) -> list[dict[str, Any]]:
    return [
        {"name": "tenant-keys", "secret": {"secretName": tenant_keys_secret_name(settings)}},
        {"name": "tenants", "configMap": {"name": tenants_configmap_name(settings)}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},  # Ray's object store and vLLM's IPC
    ]


def _add_tiny_model(spec: dict[str, Any], settings: Settings) -> None:
    """Dev only: build the tiny random-weight model into the path the plan's checkpoint names."""
    path = str(settings.tiny_model)
    mount = {"name": "tiny-model", "mountPath": posixpath.dirname(path.rstrip("/")) or "/"}
    spec["volumes"].append({"name": "tiny-model", "emptyDir": {}})
    spec["containers"][0]["volumeMounts"].append(mount)
    spec["initContainers"] = [{
        "name": "tiny-model",
        "image": APP,
        "command": ["paliserve", "tiny-model", path],
        "volumeMounts": [mount],
    }]
