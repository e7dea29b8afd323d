"""The one vocabulary: cluster spec and plan models shared by every room.

This module imports nothing from serve/, autoscale/, k8s/ or loadtests/.

Two halves:
- the cluster spec (`ClusterSpec`), what an operator writes: models, GPU pool, tenants;
- the plan (`Plan`), what the planner writes and every other room reads.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SHA256_HEX = r"^[0-9a-f]{64}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
INGRESS_MIN_ONGOING = 64
GATEWAY_DEPLOYMENT = "Gateway"  # the separate gateway's Serve deployment


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ---------------------------------------------------------------------------------------
# Cluster spec
# ---------------------------------------------------------------------------------------


class TextArchitecture(StrictModel):
    """The Gemma decoder, in Hugging Face config terms."""

    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int = Field(default=8192, gt=0)
    sliding_window: int | None = Field(
        default=None,
        gt=0,
        description="Gemma 2: every other layer attends to this many tokens only; null for Gemma 1.",
    )

    @model_validator(mode="after")
    def _grouped_heads(self) -> TextArchitecture:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        return self

    @property
    def sliding_layers(self) -> int:
        """Layers whose KV cache is capped at the window (Gemma 2 alternates, starting with one)."""
        return (self.num_layers + 1) // 2 if self.sliding_window else 0

    @property
    def full_layers(self) -> int:
        return self.num_layers - self.sliding_layers


class VisionArchitecture(StrictModel):
    """The SigLIP vision tower (no pooling head, as in PaliGemma)."""

    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(default=16, gt=0)
    patch_size: int = Field(default=14, gt=0)
    image_size: int = Field(gt=0)

    @model_validator(mode="after")
    def _whole_patches(self) -> VisionArchitecture:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        return self

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Architecture(StrictModel):
    """An explicit PaliGemma architecture, for checkpoints outside the catalog."""

    text: TextArchitecture
    vision: VisionArchitecture


class AdapterSpec(StrictModel):
    """A LoRA adapter served on top of a model, owned by one tenant."""

    name: str = Field(pattern=NAME)
    path: str = Field(min_length=1, description="Hub id or local path of the adapter.")
    tenant: str = Field(description="The tenant that owns (and alone may use) this adapter.")
    rank: int = Field(default=16, ge=1)


ModelFamily = Literal["paligemma", "paligemma2"]
ModelSize = Literal["3b", "10b", "28b"]
Resolution = Literal[224, 448, 896]


class ModelSpec(StrictModel):
    """One served model: a catalog PaliGemma (family/size/resolution) or an explicit architecture."""

    name: str = Field(pattern=NAME, description="The name clients send in the `model` field.")
    checkpoint: str | None = Field(
        default=None,
        description="Hub id or local path; catalog models default to the Google hub id.",
    )
    family: ModelFamily | None = None
    size: ModelSize = "3b"
    resolution: Resolution | None = None
    variant: Literal["pt", "mix"] = "pt"
    architecture: Architecture | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    quantization: Literal["none", "fp8", "int8", "int4"] = Field(
        default="none",
        description=(
            "Weight quantization of the decoder's linear layers. fp8: vLLM quantizes a 16-bit "
            "checkpoint as it loads it. int8/int4: the checkpoint must already be quantized (AWQ, "
            "GPTQ, compressed-tensors); vLLM reads the method from its config.json."
        ),
    )
    adapters: list[AdapterSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _catalog_or_explicit(self) -> ModelSpec:
        if self.architecture is None:
            if self.family is None:
                raise ValueError("give either `family` (with `size`, `resolution`) or `architecture`")
            if self.resolution is None:
                raise ValueError("`resolution` is required with `family` (224, 448 or 896)")
            if self.family == "paligemma" and self.size != "3b":
                raise ValueError(f"PaliGemma 1 comes in size 3b only, not {self.size}")
            if self.variant == "mix" and self.resolution == 896:
                raise ValueError("mix checkpoints exist at resolution 224 and 448 only")
        elif self.checkpoint is None:
            raise ValueError("a model with an explicit `architecture` needs a `checkpoint`")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {names}")
        return self

    @property
    def catalog_id(self) -> str | None:
        """`paligemma2-3b-pt-448`-style id of a catalog model (None for explicit architectures)."""
        if self.architecture is not None or self.family is None:
            return None
        return f"{self.family}-{self.size}-{self.variant}-{self.resolution}"

    @property
    def checkpoint_or_default(self) -> str:
        return self.checkpoint or f"google/{self.catalog_id}"


class GpuSpec(StrictModel):
    """A kind of accelerator in the pool: a catalog type, or custom figures (which override it)."""

    type: str = Field(min_length=1, description="Catalog name (e.g. L4, H100-SXM, cpu) or your own.")
    count: int = Field(default=1, ge=1, description="How many are available.")
    per_node: int = Field(default=8, ge=1, description="Accelerators per node (bounds tensor parallelism).")
    memory_gb: float | None = Field(default=None, gt=0, description="Decimal GB (1e9 bytes).")
    bandwidth_tb_s: float | None = Field(default=None, gt=0)
    tflops: float | None = Field(default=None, gt=0, description="Dense bf16 TFLOP/s.")
    cost_per_hour: float | None = Field(default=None, ge=0)
    device: Literal["cpu", "gpu"] | None = None


class TokenStats(StrictModel):
    mean: float = Field(ge=0)
    p95: float = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _scalar_means_both(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"mean": value, "p95": value}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> TokenStats:
        if self.p95 < self.mean:
            raise ValueError(f"p95 ({self.p95}) must be at least the mean ({self.mean})")
        return self


class TenantLimits(StrictModel):
    requests_per_min: int | None = Field(default=None, ge=1)
    tokens_per_min: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)


class Workload(StrictModel):
    """What a tenant sends: the load the plan must carry."""

    model: str | None = Field(default=None, description="Defaults to the tenant's first model.")
    concurrency: int = Field(ge=1, description="Target number of requests in flight.")
    baseline_concurrency: int | None = Field(
        default=None, ge=0, description="Quiet-hours concurrency (sets min replicas)."
    )
    peak_concurrency: int | None = Field(
        default=None, ge=1, description="Busiest concurrency (sets max replicas)."
    )
    request_rate: float | None = Field(default=None, gt=0, description="Requests per second.")
    prompt_tokens: TokenStats = TokenStats(mean=20, p95=40)
    output_tokens: TokenStats = TokenStats(mean=64, p95=128)
    image_resolution: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Workload:
        if self.baseline_concurrency is not None and self.baseline_concurrency > self.concurrency:
            raise ValueError(
                f"baseline_concurrency ({self.baseline_concurrency}) must not exceed concurrency ({self.concurrency})"
            )
        if self.peak_concurrency is not None and self.peak_concurrency < self.concurrency:
            raise ValueError(
                f"peak_concurrency ({self.peak_concurrency}) must be at least concurrency ({self.concurrency})"
            )
        return self

    @property
    def peak(self) -> int:
        return self.peak_concurrency or self.concurrency


class Slo(StrictModel):
    ttft_p95_ms: float = Field(gt=0)
    tpot_p95_ms: float = Field(gt=0)


class TenantSpec(StrictModel):
    name: str = Field(pattern=NAME)
    api_key_sha256: list[str] = Field(
        default_factory=list, description="SHA-256 (hex) of each API key the tenant may use."
    )
    models: list[str] = Field(min_length=1, description="Models the tenant may call.")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapters the tenant may call.")
    weight: float = Field(default=1.0, gt=0, description="Fair-share weight.")
    limits: TenantLimits = TenantLimits()
    workload: Workload
    slo: Slo

    @model_validator(mode="after")
    def _hashes(self) -> TenantSpec:
        for i, digest in enumerate(self.api_key_sha256):
            if not re.match(SHA256_HEX, digest):
                raise ValueError(f"api_key_sha256[{i}] must be 64 lowercase hex digits")
        return self

    @property
    def workload_model(self) -> str:
        return self.workload.model or self.models[0]


class HttpOptions(StrictModel):
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)


class GatewaySettings(StrictModel):
    """What a client may send the gateway, and how long a request may take."""

    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Encoded image size cap.")
    max_image_pixels: int = Field(default=4096 * 4096, gt=0, description="width x height cap, checked before decoding.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0, description="Request body cap; larger gets 413.")
    allowed_image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="From admission to the last token; past it the engine request is aborted."
    )
    remote_image_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (`name` or `name:port`) whose http(s) image URLs the gateway fetches; none by default.",
    )
    remote_image_timeout_s: float = Field(default=10.0, gt=0, description="Whole fetch of one remote image.")
    colocate: bool | None = Field(
        default=None,
        description="Run the gateway inside each engine replica (one process and one Ray call fewer per "
        "request; needs a plan with one deployment). Default: when the plan serves one model without "
        "LoRA adapters, whose requests Serve routes to the replicas holding their adapter only when "
        "the gateway is separate.",
    )
    replicas: int = Field(
        default=1, ge=1,
        description="Gateway replicas when the gateway is a deployment of its own (colocated, each engine "
        "replica carries one). Each admits its share of the engines' capacity; the tenants' fair "
        "shares and quotas hold across them through the quota store.",
    )


class PrometheusPolicyOptions(StrictModel):
    """Thresholds of the Prometheus-driven autoscaling policy (autoscale/policy.py)."""

    waiting_per_replica: float = Field(
        default=1.0, gt=0, description="Requests waiting in an engine's queue, per replica, before scaling up."
    )
    kv_cache_usage_high: float = Field(default=0.85, gt=0, le=1, description="KV-cache fraction that scales up.")
    kv_cache_usage_low: float = Field(default=0.5, ge=0, le=1, description="Below it a replica may go.")
    ttft_window_s: float = Field(default=60.0, gt=0, description="Window of the p95 TTFT rate query.")
    max_data_age_s: float = Field(default=30.0, gt=0, description="Older engine metrics are stale.")
    prometheus_address: str | None = Field(
        default=None, description="Prometheus base URL; default RAY_PROMETHEUS_HOST in the Serve controller."
    )


class PlannerOptions(StrictModel):
    """Knobs of the planner; the defaults are what the reasons in a plan explain."""

    max_memory_share: float = Field(
        default=0.92, gt=0, lt=1, description="Memory all engines on one GPU may take together."
    )
    block_size: int | None = Field(
        default=None, ge=1,
        description="vLLM KV block size in tokens; default vLLM's own for the device (128 on CPUs, 16 on GPUs).",
    )
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    prometheus_policy: PrometheusPolicyOptions | None = Field(
        default_factory=PrometheusPolicyOptions,
        description="Autoscale deployments with max > min replicas on Prometheus signals; null = Serve's default.",
    )


class ClusterSpec(StrictModel):
    """What an operator writes: models, the GPU pool and the tenants."""

    version: Literal[1] = 1
    models: list[ModelSpec] = Field(min_length=1)
    gpus: list[GpuSpec] = Field(min_length=1)
    tenants: list[TenantSpec] = Field(min_length=1)
    http: HttpOptions = HttpOptions()
    gateway: GatewaySettings = GatewaySettings()
    planner: PlannerOptions = PlannerOptions()

    @model_validator(mode="after")
    def _references(self) -> ClusterSpec:
        models = {m.name: m for m in self.models}
        tenants = {t.name for t in self.tenants}
        _require_unique("models", [m.name for m in self.models])
        _require_unique("gpus", [g.type for g in self.gpus])
        _require_unique("tenants", [t.name for t in self.tenants])
        for i, model in enumerate(self.models):
            for j, adapter in enumerate(model.adapters):
                if adapter.tenant not in tenants:
                    raise ValueError(
                        f"models[{i}].adapters[{j}].tenant: unknown tenant {adapter.tenant!r}"
                    )
        adapters = {a.name: (m.name, a.tenant) for m in self.models for a in m.adapters}
        for i, tenant in enumerate(self.tenants):
            for j, name in enumerate(tenant.models):
                if name not in models:
                    raise ValueError(f"tenants[{i}].models[{j}]: unknown model {name!r}")
            if tenant.workload.model is not None and tenant.workload.model not in tenant.models:
                raise ValueError(
                    f"tenants[{i}].workload.model: {tenant.workload.model!r} is not in the tenant's models"
                )
            for j, name in enumerate(tenant.adapters):
                if name not in adapters:
                    raise ValueError(f"tenants[{i}].adapters[{j}]: unknown adapter {name!r}")
                owner = adapters[name][1]
                if owner != tenant.name:
                    raise ValueError(
                        f"tenants[{i}].adapters[{j}]: adapter {name!r} belongs to tenant {owner!r}"
                    )
        return self

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


def _require_unique(field: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{field}: names must be unique, repeated: {dupes}")


# ---------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------


class EngineArgs(StrictModel):
    """vLLM engine arguments for one replica; field names are vLLM's own (AsyncEngineArgs)."""

    model: str = Field(description="Hub id or local path of the checkpoint.")
    served_model_name: str | None = Field(
        default=None, description="Name clients use in the `model` field; defaults to `model`."
    )
    tokenizer: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int = Field(default=2048, gt=0)
    max_num_seqs: int = Field(default=64, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    block_size: int | None = Field(default=None, gt=0, description="KV block size; None: vLLM's default for the device.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = False
    enable_lora: bool = False
    max_loras: int = Field(default=1, ge=1)
    max_lora_rank: int = Field(default=16, ge=1)
    max_cpu_loras: int | None = Field(default=None, ge=1)
    quantization: str | None = None
    seed: int = 0
    trust_remote_code: bool = False

    def vllm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for vllm.AsyncEngineArgs (None values left to vLLM's defaults)."""
        kwargs = self.model_dump(exclude_none=True)
        if not self.enable_lora:
            for key in ("max_loras", "max_lora_rank", "max_cpu_loras"):
                kwargs.pop(key, None)
        kwargs["served_model_name"] = self.public_name
        return kwargs

    @property
    def public_name(self) -> str:
        return self.served_model_name or self.model


class ReplicaBounds(StrictModel):
    min: int = Field(default=1, ge=0)
    initial: int = Field(default=1, ge=0)
    max: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        if not (self.min <= self.initial <= self.max):
            raise ValueError(
                f"replicas must satisfy min <= initial <= max, got {self.min}/{self.initial}/{self.max}"
            )
        return self


class ActorResources(StrictModel):
    """Ray resources for one engine replica; num_gpus may be fractional (replicas share a GPU)."""

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory: int | None = Field(default=None, ge=0, description="Bytes of RAM Ray reserves.")
    accelerator_type: str | None = Field(
        default=None, description="Ray accelerator type (e.g. L4, H100) the replica must land on."
    )


class KVCachePlan(StrictModel):
    bytes_per_token: int = Field(default=0, ge=0, description="All layers, K and V, engine dtype.")
    tokens_per_replica: int = Field(default=0, ge=0, description="KV tokens one replica holds.")
    blocks_per_replica: int = Field(default=0, ge=0)
    block_size: int = Field(default=16, ge=1)
    bytes_per_replica: int = Field(default=0, ge=0)
    tokens_per_request: int = Field(
        default=0, ge=0, description="Mean tokens one request holds at its end (image + prompt + output)."
    )


class MemoryBreakdown(StrictModel):
    """Bytes one replica takes on one of its devices."""

    device_bytes: int = Field(default=0, ge=0, description="Memory of the device (or RAM on CPU).")
    weights: int = Field(default=0, ge=0)
    kv_cache: int = Field(default=0, ge=0)
    activation: int = Field(default=0, ge=0)
    encoder_cache: int = Field(default=0, ge=0)
    cuda_graphs: int = Field(default=0, ge=0)
    runtime: int = Field(default=0, ge=0, description="CUDA context and non-torch allocations.")
    lora: int = Field(default=0, ge=0, description="Preallocated LoRA slots.")
    total: int = Field(default=0, ge=0)
    processes: dict[str, int] = Field(
        default_factory=dict,
        description="CPU: peak RAM of each process of one replica (engine, front end) "
        "and of Ray's own processes, once per node.",
    )


class Predicted(StrictModel):
    """What the performance model expects one replica to deliver at its planned load."""

    ttft_p95_ms: float = Field(default=0.0, ge=0)
    ttft_mean_ms: float = Field(default=0.0, ge=0, description="Mean TTFT at the planned batch (the most demanding prompt's p95 is ttft_p95_ms).")
    tpot_ms: float = Field(default=0.0, ge=0)
    tokens_per_s: float = Field(default=0.0, ge=0, description="Generated tokens/s per replica.")
    max_concurrency: int = Field(
        default=0, ge=0, description="Requests in flight per replica that still meet every SLO."
    )
    requests_per_s: float = Field(default=0.0, ge=0, description="Per replica at max_concurrency.")


class AutoscalingPolicyRef(StrictModel):
    """A custom Ray Serve autoscaling policy (`module:callable`); see the autoscaler issue."""

    policy_function: str
    policy_kwargs: dict[str, Any] = Field(default_factory=dict)


class AutoscalingTargets(StrictModel):
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    policy: AutoscalingPolicyRef | None = Field(
        default=None, description="Place for the Prometheus-driven policy; None = Serve's default."
    )


class AdapterPlan(StrictModel):
    name: str
    path: str
    tenant: str
    rank: int = 16


class DeploymentPlan(StrictModel):
    """One engine deployment: the numbers the serve runtime and the manifests consume."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    engine_args: EngineArgs
    model: str | None = Field(
        default=None, description="Spec model name clients use; defaults to the engine's public name."
    )
    replicas: ReplicaBounds = ReplicaBounds()
    ray_actor_options: ActorResources = ActorResources()
    max_ongoing_requests: int = Field(default=64, gt=0)
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for the replica process (e.g. VLLM_CPU_KVCACHE_SPACE on CPUs).",
    )
    device: Literal["cpu", "gpu"] = "gpu"
    accelerator: str | None = Field(default=None, description="Catalog GPU type it runs on.")
    gpus_per_replica: float = Field(default=0.0, ge=0)
    image_tokens: int = Field(default=0, ge=0)
    weights_bytes: int = Field(default=0, ge=0, description="Weights of one replica, all devices.")
    kv_cache: KVCachePlan = KVCachePlan()
    memory: MemoryBreakdown = MemoryBreakdown()
    predicted: Predicted = Predicted()
    autoscaling: AutoscalingTargets = AutoscalingTargets()
    adapters: list[AdapterPlan] = Field(default_factory=list)
    tenants: list[str] = Field(default_factory=list, description="Tenants whose load it carries.")
    calibration: str = Field(default="", description="Datasheet efficiencies or the profile used.")
    reasons: dict[str, str] = Field(
        default_factory=dict, description="Why each number: dotted field path -> explanation."
    )

    @model_validator(mode="after")
    def _default_model(self) -> DeploymentPlan:
        if self.model is None:
            self.model = self.engine_args.public_name
        return self

    @property
    def model_name(self) -> str:
        return self.engine_args.public_name

    def serve_deployment(self) -> dict[str, Any]:
        """This deployment's entry in a Ray Serve config."""
        actor = {
            "num_cpus": self.ray_actor_options.num_cpus,
            "num_gpus": self.ray_actor_options.num_gpus,
        }
        if self.ray_actor_options.memory is not None:
            actor["memory"] = self.ray_actor_options.memory
        if self.ray_actor_options.accelerator_type is not None:
            actor["accelerator_type"] = self.ray_actor_options.accelerator_type
        if self.env:
            actor["runtime_env"] = {"env_vars": dict(self.env)}
        autoscaling: dict[str, Any] = {
            "min_replicas": self.replicas.min,
            "initial_replicas": self.replicas.initial,
            "max_replicas": self.replicas.max,
            "target_ongoing_requests": self.autoscaling.target_ongoing_requests,
            "upscale_delay_s": self.autoscaling.upscale_delay_s,
            "downscale_delay_s": self.autoscaling.downscale_delay_s,
        }
        if self.autoscaling.policy is not None:  # the custom Prometheus-driven policy goes here
            autoscaling["policy"] = self.autoscaling.policy.model_dump()
        entry = {"name": self.name, "max_ongoing_requests": self.max_ongoing_requests, "ray_actor_options": actor}
        if self.replicas.min == self.replicas.max and self.autoscaling.policy is None:
            # Nothing to scale: a fixed count spares Serve's controller the replicas' request
            # metrics, which it merges per request under load (benchmarks/overhead.py).
            return entry | {"num_replicas": self.replicas.max}
        return entry | {"autoscaling_config": autoscaling}


class GpuSlot(StrictModel):
    deployment: str
    replica: int = Field(ge=0)
    share: float = Field(gt=0, le=1, description="Fraction of the GPU (Ray num_gpus).")
    memory_utilization: float = Field(gt=0, le=1, description="The engine's gpu_memory_utilization.")


class GpuLayout(StrictModel):
    """One physical accelerator and the replicas placed on it at max replicas."""

    index: int = Field(ge=0)
    type: str
    node: int = Field(ge=0)
    slots: list[GpuSlot] = Field(default_factory=list)


class Headroom(StrictModel):
    """SLO minus prediction: positive means the SLO is met with that much to spare."""

    ttft_ms: float = 0.0
    tpot_ms: float = 0.0


class TenantPlan(StrictModel):
    """A tenant as the runtime enforces it, with the plan's predictions for it."""

    name: str
    api_key_sha256: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    adapters: list[str] = Field(default_factory=list)
    weight: float = 1.0
    limits: TenantLimits = TenantLimits()
    workload: Workload | None = None
    slo: Slo | None = None
    deployment: str | None = Field(default=None, description="Deployment carrying its workload.")
    predicted_ttft_p95_ms: float = 0.0
    predicted_tpot_ms: float = 0.0
    headroom: Headroom = Headroom()


class Cost(StrictModel):
    per_hour_initial: float | None = None
    per_hour_max: float | None = None
    currency: str = "USD"
    per_device_hour: dict[str, float] = Field(
        default_factory=dict,
        description="Price of one device-hour per accelerator type the plan uses (the pool's cost_per_hour); "
        "`paliserve usage` prices each tenant's engine time with it.",
    )


class Plan(StrictModel):
    """A serving plan: what the planner writes and everything else reads."""

    version: Literal[1] = 1
    deployments: list[DeploymentPlan] = Field(min_length=1)
    tenants: list[TenantPlan] = Field(default_factory=list)
    gpus: int = Field(default=0, ge=0, description="Accelerators needed at max replicas.")
    gpus_initial: int = Field(default=0, ge=0, description="Accelerators needed at initial replicas.")
    gpu_layout: list[GpuLayout] = Field(default_factory=list)
    cost: Cost = Cost()
    http: HttpOptions = HttpOptions()
    gateway: GatewaySettings = GatewaySettings()
    reasons: list[str] = Field(default_factory=list, description="Plan-wide decisions, in order.")

    @model_validator(mode="after")
    def _unique(self) -> Plan:
        for attr in ("name", "model_name"):
            seen = [getattr(d, attr) for d in self.deployments]
            dupes = sorted({x for x in seen if seen.count(x) > 1})
            if dupes:
                raise ValueError(f"deployments must have unique {attr}s, repeated: {dupes}")
        return self

    @model_validator(mode="after")
    def _colocatable(self) -> Plan:
        if self.gateway.replicas > 1 and self.colocated:
            raise ValueError(
                "gateway.replicas applies to a separate gateway; set gateway.colocate: false "
                "(colocated, each engine replica carries its own gateway)"
            )
        if self.gateway.colocate and len(self.deployments) != 1:
            raise ValueError(
                f"gateway.colocate needs a plan with one deployment; this one has {len(self.deployments)}"
            )
        return self

    @property
    def colocated(self) -> bool:
        """Whether the gateway runs inside the engine replicas (see `GatewaySettings.colocate`)."""
        if self.gateway.colocate is not None:
            return self.gateway.colocate
        return len(self.deployments) == 1 and not self.deployments[0].adapters

    @property
    def ingress_deployment(self) -> str:
        """The Serve deployment that answers HTTP: the gateway, or colocated, the model's own."""
        return self.deployments[0].name if self.colocated else GATEWAY_DEPLOYMENT

    def replicas_behind_ingress(self, deployment: DeploymentPlan) -> int:
        """Engine replicas of `deployment` that one ingress replica sends requests to: its own
        engine when colocated, else all of them at max replicas."""
        return 1 if self.colocated else deployment.replicas.max

    def ingress_replicas(self) -> int:
        """Replicas that answer HTTP, at most: the gateway's, or colocated, the one model's."""
        return self.deployments[0].replicas.max if self.colocated else self.gateway.replicas

    def needs_quota_store(self) -> bool:
        """Tenants with limits, or tenants whose fair shares must hold across several ingress
        replicas (serve/tenancy/fairshare.py), need the shared store."""
        limited = any(v is not None for t in self.tenants for v in t.limits.model_dump().values())
        return limited or (bool(self.tenants) and self.ingress_replicas() > 1)

    def ingress_max_ongoing_requests(self) -> int:
        """Requests one ingress replica accepts: four times what the engines behind it hold, at
        least 64, so that requests wait in its fair queue; Serve's default of 5 would queue the
        rest at the proxy, where no tenant's share counts."""
        held = sum(d.max_ongoing_requests * self.replicas_behind_ingress(d) for d in self.deployments)
        return max(INGRESS_MIN_ONGOING, 4 * held)

    def serve_deployments(self) -> list[dict[str, Any]]:
        """The deployments' entries of the Serve config; colocated, the one deployment is the ingress."""
        entries = [d.serve_deployment() for d in self.deployments]
        if self.colocated:
            entries[0]["max_ongoing_requests"] = self.ingress_max_ongoing_requests()
        return entries

    def serve_config(self) -> dict[str, Any]:
        """A Ray Serve config (`serve deploy` / ServeDeploySchema) for this plan."""
        return {
            "http_options": {"host": self.http.host, "port": self.http.port},
            "applications": [
                {
                    "name": "paliserve",
                    "route_prefix": "/",
                    "import_path": "serve.app:app_builder",
                    "args": {"plan": self.model_dump(mode="json")},
                    "deployments": self.serve_deployments(),
                }
            ],
        }
