"""Checks of a plan's local checkpoints that need no engine: run before any process is started.

What is checked is what makes an engine fail only after Ray, Serve and vLLM have started: a
missing directory, a config.json that is not a JSON object with a `model_type` or that names no
generative architecture (vLLM would serve a pooling model that refuses generation), no weight
files, and safetensors files whose header is unreadable or whose tensors run past the end of
the file (truncated downloads). Hub ids that are not local paths are left to the engine.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from paliserve.spec import Plan

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# Architecture-name suffixes vLLM runs as generative models (vllm/config/model.py
# `_SUFFIX_TO_DEFAULTS`); any other name, or none, resolves to a pooling model, which loads and
# then refuses every generation request ("This model does not support generation").
GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "ChatModel", "LMHeadModel")
KNOWN_ARCHITECTURES = {"paligemma": "PaliGemmaForConditionalGeneration"}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class CheckpointError(Exception):
    def __init__(self, path: str | Path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"checkpoint {self.path}: {cause}")


def looks_local(model: str) -> bool:
    return Path(model).expanduser().exists() or model.startswith(("/", "./", "../", "~"))


def check_checkpoint(model: str) -> None:
    """Raise CheckpointError naming `model` and the cause when a local checkpoint cannot load."""
    if not looks_local(model):
        return
    root = Path(model).expanduser()
    if not root.exists():
        raise CheckpointError(model, "does not exist")
    if not root.is_dir():
        raise CheckpointError(model, "is not a directory")
    _check_config(model, root / "config.json")
    weights = sorted(p for pattern in WEIGHT_PATTERNS for p in root.glob(pattern))
    if not weights:
        raise CheckpointError(model, f"no weight files ({', '.join(WEIGHT_PATTERNS)})")
    _check_index(model, root)
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(model, path)


def check_plan(plan: Plan) -> list[CheckpointError]:
    errors = []
    for deployment in plan.deployments:
        try:
            check_checkpoint(deployment.engine_args.model)
        except CheckpointError as exc:
            errors.append(exc)
    return errors


def _check_config(model: str, path: Path) -> None:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(model, "has no config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(model, f"config.json is unreadable: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(model, f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(model, "config.json is not a model config (no model_type)")
    _check_architectures(model, config)


def _check_architectures(model: str, config: dict) -> None:
    architectures = config.get("architectures")
    expected = KNOWN_ARCHITECTURES.get(config["model_type"])
    fix = (f'add "architectures": ["{expected}"] to config.json' if expected
           else f"config.json needs an architecture ending in {' or '.join(GENERATIVE_SUFFIXES)}")  # fmt: skip
    if not architectures:
        raise CheckpointError(
            model, f"config.json has no `architectures`: vLLM would load it as a pooling model that refuses "
            f"generation; {fix}"
        )  # fmt: skip
    if isinstance(architectures, str):
        architectures = [architectures]
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CheckpointError(model, f"config.json `architectures` is not a list of names: {architectures!r}")
    if not any(a.endswith(GENERATIVE_SUFFIXES) for a in architectures):
        raise CheckpointError(
            model, f"config.json's architectures {architectures} are not generative: vLLM would serve them as a "
            f"pooling model that refuses generation; {fix}"
        )  # fmt: skip


def _check_index(model: str, root: Path) -> None:
    index = root / "model.safetensors.index.json"
    if not index.exists():
        return
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(model, f"{index.name} is not a weight index: {exc}") from None
    missing = sorted(s for s in shards if not (root / s).is_file())
    if missing:
        raise CheckpointError(model, f"{index.name} names missing shards: {', '.join(missing)}")


def _check_safetensors(model: str, path: Path) -> None:
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{size} bytes, shorter than a header")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise ValueError(f"header length {header_len} does not fit the file's {size} bytes")
            header = json.loads(f.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        tensors = [v for k, v in header.items() if k != "__metadata__"]
        end = max((int(t["data_offsets"][1]) for t in tensors), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(model, f"{path.name} is not a valid safetensors file: {exc}") from None
    if 8 + header_len + end != size:
        raise CheckpointError(
            model, f"{path.name} is truncated or corrupt: its header needs {8 + header_len + end} bytes, the file has {size}"
        )


# --- memory: refuse a plan this machine cannot hold, before anything is loaded ------------------


@dataclass(frozen=True)
class Machine:
    """The memory figures the check compares with (psutil's for this machine, or given by a test)."""

    ram_total: int
    ram_available: int
    gpu_memory: int | None = None  # bytes of one GPU
    cpu_bf16: bool = False

    @classmethod
    def here(cls) -> Machine:
        import psutil

        from paliserve.local import cpu_supports_bf16

        vm = psutil.virtual_memory()
        gpu = None
        try:
            import torch

            if torch.cuda.is_available():
                gpu = torch.cuda.get_device_properties(0).total_memory
        except Exception:
            gpu = None
        return cls(ram_total=vm.total, ram_available=vm.available, gpu_memory=gpu, cpu_bf16=cpu_supports_bf16())


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _architecture(model: str):
    """The Architecture of a local checkpoint or a catalog id; None when neither (left to the engine)."""
    from autoscale.catalog import architecture_of, model_from_id
    from autoscale.loading import architecture_from_config
    from paliserve.spec import Architecture

    if looks_local(model):
        config = json.loads((Path(model).expanduser() / "config.json").read_text())
        try:
            return Architecture.model_validate(architecture_from_config(config, model)), config
        except Exception:
            return None, config
    try:
        return architecture_of(model_from_id(model)), {}
    except ValueError:
        return None, {}


def _resolved_dtype(dtype: str, config: dict) -> str:
    if dtype != "auto":
        return dtype
    found = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return found if found in ("bfloat16", "float16", "float32") else "bfloat16"


def check_memory(plan: Plan, machine: Machine) -> list[str]:
    """Why this machine cannot hold `plan` by the planner's memory model (autoscale/memory.py), each
    reason naming the numbers and the nearest change that fits; empty when it can."""
    from autoscale.memory import CPU_DEFAULT_KV_GIB, GIB, cpu_serving_memory, gpu_serving_memory

    problems: list[str] = []
    cpu_parts = []
    for deployment in plan.deployments:
        args = deployment.engine_args
        arch, config = _architecture(args.model)
        if arch is None:
            continue
        dtype = _resolved_dtype(args.dtype, config)
        replicas = max(deployment.replicas.initial, deployment.replicas.min, 1)
        batched = args.max_num_batched_tokens or max(2048, arch.vision.image_tokens + 64)
        name = deployment.model_name
        if deployment.device == "cpu":
            kv_gib = float(deployment.env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_DEFAULT_KV_GIB)

            def need(dtype=dtype, kv_gib=kv_gib):
                return cpu_serving_memory(arch, dtype, int(kv_gib * GIB), batched, args.max_num_seqs)

            cpu_parts.append(_CpuPart(name, replicas, dtype, kv_gib, need(), need, deployment.name))
        elif machine.gpu_memory:
            tp = args.tensor_parallel_size
            limit = machine.gpu_memory * args.gpu_memory_utilization

            def gneed(dtype=dtype, max_model_len=args.max_model_len):
                return gpu_serving_memory(arch, dtype, max_model_len, batched, args.max_num_seqs, tp,
                                          args.enforce_eager, args.quantization or "none")  # fmt: skip

            mem = gneed()
            if mem.engine > limit:
                fix = _nearest_gpu_change(dtype, args.max_model_len, limit, gneed)
                problems.append(
                    f"{name} needs {_gib(mem.engine)} per GPU ({mem.describe()}) and gpu_memory_utilization "
                    f"{args.gpu_memory_utilization} of this GPU's {_gib(machine.gpu_memory)} is {_gib(limit)}; {fix}"
                )  # fmt: skip
    cpu_parts, node_note = _on_the_busiest_node(plan, cpu_parts)
    if cpu_parts:
        cpu_engines = sum(p.replicas * p.mem.engine for p in cpu_parts)
        cpu_ray = max(p.mem.ray for p in cpu_parts)
        cpu_stack = sum(p.replicas * p.mem.front_end for p in cpu_parts) + cpu_ray  # besides the engines
        total = cpu_engines + cpu_stack
        over_total = total > machine.ram_total
        over_available = cpu_engines > machine.ram_available
        if over_total or over_available:
            name, replicas, dtype, kv_gib, mem, need, _ = max(cpu_parts, key=lambda p: p.replicas * p.mem.engine)
            if over_total:
                head = (f"RAM: serving needs {_gib(total)}{node_note} ({name}: {mem.describe()}"
                        f"{f', x{replicas} replicas' if replicas > 1 else ''}) and this machine has {_gib(machine.ram_total)}")  # fmt: skip
                room = machine.ram_total - cpu_stack - (cpu_engines - replicas * mem.engine)
            else:
                engines = sum(p.replicas for p in cpu_parts)
                head = (f"RAM: the engine{'s need' if engines > 1 else ' needs'} {_gib(cpu_engines)}{node_note} ({name}: "
                        f"{mem.describe(stack=False)}) and {_gib(machine.ram_available)} is available now")  # fmt: skip
                room = machine.ram_available - (cpu_engines - replicas * mem.engine)
                if not over_total:
                    head += f" (of {_gib(machine.ram_total)})"
            problems.append(f"{head}; {_nearest_cpu_change(dtype, kv_gib, replicas, room, need, machine.cpu_bf16)}")
    return problems


class _CpuPart(NamedTuple):
    name: str  # the model's served name
    replicas: int
    dtype: str
    kv_gib: float
    mem: object  # autoscale.memory's figures for one replica
    need: object  # (dtype=, kv_gib=) -> those figures with a change
    deployment: str


def _on_the_busiest_node(plan: Plan, cpu_parts: list[_CpuPart]) -> tuple[list[_CpuPart], str]:
    """The CPU deployments' replica counts on the one node of a multi-node layout that needs the
    most RAM, and a note naming it: each machine holds its node's replicas, not the whole plan's.
    A deployment the layout does not place (no GPU share) may land on any node, so it counts whole
    on each. Machines are taken as alike: `up` checks the head, the others are the operator's."""
    from serve.placement import planned_per_node

    per_node = planned_per_node(plan)
    if not cpu_parts or len(per_node) < 2:
        return cpu_parts, ""
    placed = {name for counts in per_node.values() for name in counts}

    def on(node: int) -> list[_CpuPart]:
        return [p._replace(replicas=per_node[node][p.deployment]) if p.deployment in placed else p for p in cpu_parts]

    def ram(parts: list[_CpuPart]) -> int:
        return sum(p.replicas * (p.mem.engine + p.mem.front_end) for p in parts)

    busiest = max(per_node, key=lambda node: ram(on(node)))
    parts = [p for p in on(busiest) if p.replicas > 0]
    return parts, f" on the plan's node {busiest} (of {len(per_node)}; each machine holds its node's replicas)"


def _nearest_cpu_change(dtype, kv_gib, replicas, room, need, cpu_bf16) -> str:
    """The first change that fits `room` (bytes left for this deployment's engines): bfloat16,
    then a smaller KV cache."""

    def fits(m) -> bool:
        return replicas * m.engine <= room

    if dtype == "float32" and cpu_bf16:
        m = need(dtype="bfloat16")
        if fits(m):
            return f"in bfloat16 (--dtype bfloat16; this CPU has it) it needs {_gib(m.engine)} for the engine and fits"
    for kv in range(int(kv_gib) - 1, 0, -1):
        m = need(kv_gib=kv)
        if fits(m):
            return (f"a smaller KV cache fits: VLLM_CPU_KVCACHE_SPACE={kv} in the deployment's env (GiB, now {kv_gib:g}) needs "
                    f"{_gib(m.engine)} for the engine")  # fmt: skip
    if dtype == "float32" and not cpu_bf16:
        m = need(dtype="bfloat16", kv_gib=1)
        if fits(m):
            return (f"bfloat16 would fit ({_gib(m.engine)} for the engine) but this CPU has no bfloat16 "
                    f"instructions; use a machine with more RAM")  # fmt: skip
    m = need(dtype="bfloat16" if cpu_bf16 else dtype, kv_gib=1)
    return (f"even with {'bfloat16 and ' if cpu_bf16 else ''}a 1 GiB KV cache the engine needs {_gib(m.engine)}: "
            f"use a machine with more RAM, or a smaller model")  # fmt: skip


def _nearest_gpu_change(dtype, max_model_len, limit, need) -> str:
    if dtype == "float32":
        m = need(dtype="bfloat16")
        if m.engine <= limit:
            return f"in bfloat16 (--dtype bfloat16) it needs {_gib(m.engine)} and fits"
    length = max_model_len // 2
    while length >= 256:
        m = need(max_model_len=length)
        if m.engine <= limit:
            return f"a shorter context fits: --max-model-len {length} needs {_gib(m.engine)}"
        length //= 2
    return "use a GPU with more memory, tensor parallelism, or quantization"
