"""What the manifests need beyond the plan: names, image, where Prometheus and KubeRay live."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version

KUBERNETES_VERSION = "1.32"  # built-in kinds are validated against this release's schemas
RAY_VERSION = "2.60.0"
APP = "paliserve"  # app.kubernetes.io/name on every pod; the PodMonitor selects it
# The images scripts/build_images.sh tags: vLLM's GPU build (images/Containerfile.gpu), the
# default `--image`, and vLLM's CPU build (images/Containerfile.cpu), what CPU workers run
IMAGE = f"{APP}:{version(APP)}"
CPU_IMAGE = f"{IMAGE}-cpu"

# Ray's fixed ports (KubeRay defaults); the serve port comes from the plan.
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
METRICS_PORT = 8080
RESERVED_PORTS = {GCS_PORT: "GCS", DASHBOARD_PORT: "dashboard", CLIENT_PORT: "Ray client",
                  METRICS_PORT: "metrics export", 52365: "dashboard agent"}

# Node label values NVIDIA GPU Feature Discovery sets (`nvidia.com/gpu.product`): the product
# name with spaces as dashes. Check yours with `kubectl get nodes -L nvidia.com/gpu.product`.
GPU_PRODUCTS = {
    "H100-SXM": "NVIDIA-H100-80GB-HBM3",
    "H100-PCIe": "NVIDIA-H100-PCIe",
    "H200": "NVIDIA-H200",
    "A100-80GB": "NVIDIA-A100-SXM4-80GB",
    "A100-40GB": "NVIDIA-A100-SXM4-40GB",
    "L40S": "NVIDIA-L40S",
    "L4": "NVIDIA-L4",
    "A10G": "NVIDIA-A10G",
    "T4": "Tesla-T4",
}


@dataclass(frozen=True)
class Settings:
    name: str = APP
    image: str = IMAGE
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    monitoring_namespace: str = "monitoring"
    operator_namespace: str = "kuberay-system"
    head_cpus: int = 2
    head_memory_gib: int = 8
    worker_memory_gib_per_gpu: int = 32
    cpu_worker_memory_gib: int = 8
    tiny_model: str | None = None  # CPU workers build the tiny test model here before Ray starts
    gpu_products: dict[str, str] = field(default_factory=lambda: dict(GPU_PRODUCTS))
    # the quota store (k8s/quotastore.py): an existing Redis (redis:// or rediss://), or None to
    # render one
    quota_store_url: str | None = None
    quota_store_image: str = "redis:7.0.15"
    # GCS fault tolerance (k8s/gcsstore.py): an operator-given Redis (HOST:PORT or redis://...),
    # or `gcs_store` to render one; neither: off
    gcs_redis_address: str | None = None
    gcs_store: bool = False

    def __post_init__(self):
        if self.quota_store_url is not None and not self.quota_store_url.startswith(("redis://", "rediss://")):
            raise ValueError(f"--quota-store-url: expected redis://HOST:PORT/DB or rediss://..., got {self.quota_store_url!r}")

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": self.name}
