"""Catalogs: PaliGemma architectures and accelerators (figures from shared/reference/FACTS.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from paliserve.spec import (
    Architecture,
    GpuSpec,
    ModelSpec,
    TextArchitecture,
    VisionArchitecture,
)

GB = 10**9
GIB = 2**30

SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16, patch_size=14)
GEMMA_VOCAB = 257216

DECODERS: dict[tuple[str, str], TextArchitecture] = {
    ("paligemma", "3b"): TextArchitecture(
        hidden_size=2048, intermediate_size=16384, num_layers=18, num_heads=8, num_kv_heads=1,
        head_dim=256, vocab_size=GEMMA_VOCAB, max_position_embeddings=8192,
    ),
    ("paligemma2", "3b"): TextArchitecture(
        hidden_size=2304, intermediate_size=9216, num_layers=26, num_heads=8, num_kv_heads=4,
        head_dim=256, vocab_size=GEMMA_VOCAB, max_position_embeddings=8192, sliding_window=4096,
    ),
    ("paligemma2", "10b"): TextArchitecture(
        hidden_size=3584, intermediate_size=14336, num_layers=42, num_heads=16, num_kv_heads=8,
        head_dim=256, vocab_size=GEMMA_VOCAB, max_position_embeddings=8192, sliding_window=4096,
    ),
    ("paligemma2", "28b"): TextArchitecture(
        hidden_size=4608, intermediate_size=36864, num_layers=46, num_heads=32, num_kv_heads=16,
        head_dim=128, vocab_size=GEMMA_VOCAB, max_position_embeddings=8192, sliding_window=4096,
    ),
}

CATALOG_ID = re.compile(r"^(?:google/)?(paligemma2?)-(3b|10b|28b)-(pt|mix)-(224|448|896)$")


def architecture_of(model: ModelSpec) -> Architecture:
    """The architecture of a spec model: its explicit one, or the catalog's."""
    if model.architecture is not None:
        return model.architecture
    assert model.family is not None and model.resolution is not None  # guaranteed by ModelSpec
    text = DECODERS[(model.family, model.size)]
    vision = VisionArchitecture(image_size=model.resolution, **SIGLIP_SO400M)
    return Architecture(text=text, vision=vision)


def catalog_model_ids() -> list[str]:
    """Every catalog checkpoint id, e.g. `paligemma-3b-mix-448`, `paligemma2-28b-pt-896`."""
    ids = []
    for family, size in DECODERS:
        for variant in ("pt", "mix"):
            for resolution in (224, 448, 896):
                if not (variant == "mix" and resolution == 896):
                    ids.append(f"{family}-{size}-{variant}-{resolution}")
    return ids


def model_from_id(model_id: str, name: str | None = None) -> ModelSpec:
    """A ModelSpec for a catalog id (with or without the `google/` prefix)."""
    match = CATALOG_ID.match(model_id)
    if not match:
        raise ValueError(
            f"model {model_id!r} is not a catalog id; expected e.g. paligemma-3b-mix-448 or "
            f"paligemma2-10b-pt-896 (families paligemma/paligemma2, sizes 3b/10b/28b, pt/mix, 224/448/896)"
        )
    family, size, variant, resolution = match.groups()
    return ModelSpec(
        name=name or f"{family}-{size}-{variant}-{resolution}",
        family=family, size=size, variant=variant, resolution=int(resolution),
    )


@dataclass(frozen=True)
class Accelerator:
    """One accelerator kind with the figures the sizing and performance models need."""

    name: str
    device: str  # "gpu" or "cpu"
    memory_bytes: int
    bandwidth_bytes_s: float
    flops: float  # dense bf16 (fp16 on T4, fp32 on CPU)
    ray_accelerator_type: str | None = None
    supports_bf16: bool = True
    cost_per_hour: float | None = None
    count: int = 1
    per_node: int = 8
    flops_by_dtype: tuple[tuple[str, float], ...] = ()  # measured per dtype (host probe); else `flops`
    speed_source: str = "catalog"  # where bandwidth and FLOP/s come from: catalog, spec or the host probe

    @property
    def probed(self) -> bool:
        return bool(self.flops_by_dtype)

    def flops_for(self, dtype: str) -> float:
        """FLOP/s in `dtype`: the measured figure where the probe has one, else `flops`."""
        return dict(self.flops_by_dtype).get(dtype, self.flops)


@dataclass(frozen=True)
class HostFigures:
    """This machine's speed as the host probe (autoscale/host_probe.py) measured it, for `cpu`
    pools whose spec gives neither bandwidth nor FLOP/s. The CLI measures; the planner only reads."""

    bandwidth_bytes_s: float
    flops_by_dtype: tuple[tuple[str, float], ...]  # (dtype, FLOP/s of prefill-shaped matmuls)
    source: str  # what was measured, when, and whether it came from the cache


GPU_CATALOG: dict[str, Accelerator] = {
    a.name: a
    for a in [
        Accelerator("H100-SXM", "gpu", 80 * GB, 3.35e12, 989e12, "H100"),
        Accelerator("H100-PCIe", "gpu", 80 * GB, 2.0e12, 756e12, "H100"),
        Accelerator("H200", "gpu", 141 * GB, 4.8e12, 989e12, "H200"),
        Accelerator("A100-80GB", "gpu", 80 * GB, 2.039e12, 312e12, "A100"),
        Accelerator("A100-40GB", "gpu", 40 * GB, 1.555e12, 312e12, "A100"),
        Accelerator("L40S", "gpu", 48 * GB, 0.864e12, 362e12, "L40S"),
        Accelerator("L4", "gpu", 24 * GB, 0.300e12, 121e12, "L4"),
        Accelerator("A10G", "gpu", 24 * GB, 0.600e12, 70e12, "A10G"),
        Accelerator("T4", "gpu", 16 * GB, 0.320e12, 65e12, "T4", supports_bf16=False),
        # A small CPU machine like the development box (2 cores, 24 GiB); override memory_gb
        # etc. in the spec, or calibrate with `paliserve profile`.
        Accelerator("cpu", "cpu", 24 * GIB, 20e9, 0.1e12, None),
    ]
}


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip()).lower()


_ALIASES = {_key(name): name for name in GPU_CATALOG} | {
    "h100": "H100-SXM", "a100": "A100-80GB", "a100-80g": "A100-80GB", "a100-40g": "A100-40GB",
    "a100-sxm-80gb": "A100-80GB",
}


def find_gpu(name: str) -> Accelerator | None:
    """Catalog lookup tolerant of case and spaces (`H100 SXM` == `h100-sxm`)."""
    canonical = _ALIASES.get(_key(name))
    return GPU_CATALOG[canonical] if canonical else None


def accelerator_of(gpu: GpuSpec, field: str = "gpus", host: HostFigures | None = None) -> Accelerator:
    """Resolve a pool entry: catalog figures, overridden by any given in the spec; the catalog
    `cpu` takes `host`'s measured figures when the spec gives neither bandwidth nor FLOP/s."""
    base = find_gpu(gpu.type)
    missing = [f for f in ("memory_gb", "bandwidth_tb_s", "tflops") if getattr(gpu, f) is None]
    if base is None and missing:
        known = ", ".join(GPU_CATALOG)
        raise ValueError(
            f"{field}.type: {gpu.type!r} is not in the catalog ({known}); "
            f"a custom accelerator needs {', '.join(missing)}"
        )
    device = gpu.device or (base.device if base else "gpu")
    speed_given = gpu.bandwidth_tb_s is not None or gpu.tflops is not None
    if host is not None and base is not None and base.name == "cpu" and device == "cpu" and not speed_given:
        return Accelerator(
            name=base.name, device=device,
            memory_bytes=int(gpu.memory_gb * GB) if gpu.memory_gb else base.memory_bytes,
            bandwidth_bytes_s=host.bandwidth_bytes_s,
            flops=dict(host.flops_by_dtype).get("float32", max(f for _, f in host.flops_by_dtype)),
            supports_bf16=any(dtype == "bfloat16" for dtype, _ in host.flops_by_dtype),
            cost_per_hour=gpu.cost_per_hour, count=gpu.count, per_node=gpu.per_node,
            flops_by_dtype=host.flops_by_dtype, speed_source=f"host probe: {host.source}",
        )  # fmt: skip
    return Accelerator(
        name=base.name if base else gpu.type,
        device=device,
        memory_bytes=int(gpu.memory_gb * GB) if gpu.memory_gb else base.memory_bytes,
        bandwidth_bytes_s=gpu.bandwidth_tb_s * 1e12 if gpu.bandwidth_tb_s else base.bandwidth_bytes_s,
        flops=gpu.tflops * 1e12 if gpu.tflops else base.flops,
        ray_accelerator_type=base.ray_accelerator_type if base else None,
        supports_bf16=base.supports_bf16 if base else True,
        cost_per_hour=gpu.cost_per_hour,
        count=gpu.count,
        per_node=gpu.per_node,
        speed_source="spec" if speed_given else "catalog",
    )
