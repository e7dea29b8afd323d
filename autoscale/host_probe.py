"""Host speed probe: the memory bandwidth and matmul throughput this machine gives an engine.

Measured with torch in a few seconds, on as many threads as vLLM's CPU engine will use here:
- bandwidth (CPU): what a decode step streams its weights at: decode-shaped products x[b, 2048] @
  W[2048, 16384] at batch 1 and 4 (vLLM's linear layers at batch 1-4) over 512 MiB of weights, far
  more than the caches hold, in the dtype the engine computes in (bfloat16 where the CPU has it,
  else float32), through torch's oneDNN linear with prepacked weights (the kernel vLLM's CPU engine
  prepacks its linear layers for); the slower of the two batches. The float32 streaming read (sum)
  that version 1 used is kept beside it (`read_bytes_s`): a decode step's products read slower than
  a sum (here about half). On CUDA the bandwidth is that streaming read;
- matmul: prefill-shaped products (512 tokens x 2048 -> 8192, as a PaliGemma decoder's linear
  layers), in bfloat16 where the device computes in it and in float32.
Each figure is the best of several timed runs after a warm-up (another process's burst only slows
some runs).

Cached per machine under PALISERVE_CACHE (or ~/.cache/paliserve) in host-probe/<key>.json, the key
a hash of the CPU model, flags, logical CPU count, the thread count, torch's version and this
probe's version: an unreadable or foreign cache file is measured again and replaced. A probe whose
threads got less than CONTENDED_BELOW of their cores (other processes busy) is returned but not
cached, so a busy minute is not kept as the machine's speed.

Standalone with only torch and the standard library, so it runs on a machine without this project:
`python autoscale/host_probe.py --device cpu|cuda` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PROBE_VERSION = 2  # 2: bandwidth from decode-shaped products (1: a float32 sum)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX512-BF16, AMX) and aarch64 ("bf16")
# (tokens, in, out) of the matmul, and bytes read per bandwidth pass, per device kind.
MATMUL_SHAPE = {"cpu": (512, 2048, 8192), "cuda": (8192, 8192, 8192)}
READ_BYTES = {"cpu": 512 * 2**20, "cuda": 4 * 2**30}
# decode-shaped products on a CPU: (in, out) of each weight matrix, the batches, the weights' bytes
DECODE_SHAPE, DECODE_BATCHES, DECODE_BYTES = (2048, 16384), (1, 4), 512 * 2**20
DECODE_BUDGET_S = 0.5  # per batch (one pass over the weights takes ~40 ms here)
RUNS = (3, 40)  # timed runs of each figure: at least, at most (reads take ~25 ms, products ~0.1 s)
RUN_BUDGET_S = 1.0  # stop adding runs past this much time per figure
CONTENDED_BELOW = 0.9  # a probe whose threads got less of the cores than this is not cached


@dataclass(frozen=True)
class HostSpeed:
    device: str  # "cpu" or "cuda"
    name: str  # CPU model or GPU name
    threads: int  # threads the probe ran on (vLLM's CPU engine's count; torch's for CUDA)
    bandwidth_bytes_s: float  # CPU: decode-shaped products' weight bytes/s (slowest batch); CUDA: streaming read
    flops: dict[str, float]  # dtype -> FLOP/s of the prefill-shaped matmul
    seconds: float  # the probe's own wall time
    measured_at: str
    torch_version: str
    cpu_share: float = 1.0  # of its threads' time the probe got (1 on GPUs, where the CPU waits)
    key: str = ""
    probe_version: int = PROBE_VERSION
    shapes: dict[str, list[int]] = field(default_factory=dict)
    read_bytes_s: float = 0.0  # float32 streaming read (sum), for comparison (0: not measured)
    decode_bytes_s: dict[str, float] = field(default_factory=dict)  # batch -> weight bytes/s of the products
    decode_kernel: str = ""  # what ran them: "onednn prepacked <dtype>" or "torch linear <dtype>"

    @property
    def supports_bf16(self) -> bool:
        return "bfloat16" in self.flops

    @property
    def contended(self) -> bool:
        """Other processes took part of the cores while it ran: the figures are low."""
        return self.cpu_share < CONTENDED_BELOW

    def describe(self) -> str:
        rates = ", ".join(f"{f / 1e12:.3g} TFLOP/s {dtype}" for dtype, f in self.flops.items())
        busy = f" (under load: its threads got {self.cpu_share:.0%} of the cores)" if self.contended else ""
        if self.decode_bytes_s:
            batches = ", ".join(f"{b}: {v / 1e9:.3g}" for b, v in self.decode_bytes_s.items())
            read = (f"{self.bandwidth_bytes_s / 1e9:.3g} GB/s decode-shaped ({self.decode_kernel}; GB/s by batch "
                    f"{batches}; float32 sum {self.read_bytes_s / 1e9:.3g} GB/s)")  # fmt: skip
        else:
            read = f"{self.bandwidth_bytes_s / 1e9:.3g} GB/s read"
        return (f"{self.name}, {self.threads} thread{'s' if self.threads != 1 else ''}: "
                f"{read}, {rates}; measured {self.measured_at}{busy}")  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping) -> HostSpeed:
        """Parse a cached or printed probe; ValueError when a field is missing, mistyped or not positive."""
        try:
            speed = cls(
                device=str(data["device"]), name=str(data["name"]), threads=int(data["threads"]),
                bandwidth_bytes_s=float(data["bandwidth_bytes_s"]),
                flops={str(k): float(v) for k, v in dict(data["flops"]).items()},
                seconds=float(data["seconds"]), measured_at=str(data["measured_at"]),
                torch_version=str(data["torch_version"]), cpu_share=float(data.get("cpu_share", 1.0)),
                key=str(data.get("key", "")),
                probe_version=int(data.get("probe_version", 0)),
                shapes={str(k): [int(x) for x in v] for k, v in dict(data.get("shapes", {})).items()},
                read_bytes_s=float(data.get("read_bytes_s", 0.0)),
                decode_bytes_s={str(k): float(v) for k, v in dict(data.get("decode_bytes_s", {})).items()},
                decode_kernel=str(data.get("decode_kernel", "")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a host probe result: {error!r}") from None
        figures = [speed.bandwidth_bytes_s, *speed.flops.values(), *speed.decode_bytes_s.values()]
        if not speed.flops or speed.threads < 1 or not all(f > 0 and f != float("inf") for f in figures):
            raise ValueError(f"not a host probe result: figures must be positive ({figures}, {speed.threads} threads)")
        return speed


# --- the machine -----------------------------------------------------------------------------


def cpu_info(text: str | None = None) -> tuple[str, list[str]]:
    """(model name, sorted flags) from /proc/cpuinfo (or the given text); the platform's name elsewhere."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine(), []
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not name:
            name = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return name or platform.processor() or platform.machine(), sorted(flags)


def cpu_supports_bf16(flags: list[str]) -> bool:
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def _id_list(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            low, high = part.split("-")
            ids.extend(range(int(low), int(high) + 1))
        elif part:
            ids.append(int(part))
    return ids


def _cpu_topology(sys_root: Path, allowed: set[int]) -> list[tuple[int, int, int]]:
    """(cpu id, physical core, NUMA node) of each allowed logical CPU; node 0 where the kernel
    shows no NUMA nodes."""
    node_of = {}
    for node_dir in sorted(sys_root.glob("node/node[0-9]*")):
        try:
            for cpu in _id_list((node_dir / "cpulist").read_text()):
                node_of[cpu] = int(node_dir.name[4:])
        except (OSError, ValueError):
            continue
    result = []
    for cpu in sorted(allowed):
        topology = sys_root / "cpu" / f"cpu{cpu}" / "topology"
        try:
            package = int((topology / "physical_package_id").read_text())
            core = int((topology / "core_id").read_text())
        except (OSError, ValueError):
            package, core = 0, cpu
        result.append((cpu, package * 100_000 + core, node_of.get(cpu, 0)))
    return result


def engine_threads(env: Mapping[str, str] | None = None, sys_root: Path = Path("/sys/devices/system"),
                   allowed: set[int] | None = None) -> int:  # fmt: skip
    """Threads vLLM's CPU engine (one worker, tensor_parallel_size 1) computes on here, as its
    OMPProcessManager decides: VLLM_CPU_OMP_THREADS_BIND's list when given; with "auto" (the
    default) one logical CPU per physical core of the first NUMA node the process may use, less the
    cores reserved for the scheduler (VLLM_CPU_NUM_OF_RESERVED_CPU, default 1, none when that would
    leave nothing); with "nobind", torch's default (all allowed CPUs)."""
    env = os.environ if env is None else env
    if allowed is None:
        allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    bind = env.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if bind == "nobind":
        return max(1, len(allowed))
    if bind != "auto":
        return max(1, len(_id_list(bind.split("|")[0])))
    cpus = _cpu_topology(sys_root, allowed)
    first_node = min(node for _, _, node in cpus)
    cores = {core for _, core, node in cpus if node == first_node}
    reserved = int(env.get("VLLM_CPU_NUM_OF_RESERVED_CPU") or 1)
    return len(cores) - reserved if len(cores) > reserved else len(cores)


def machine_key(device: str, name: str, flags: list[str], threads: int, torch_version: str) -> str:
    """The cache key: a probe is reused only on the same hardware, thread count and torch."""
    text = json.dumps([PROBE_VERSION, device, name, flags, os.cpu_count(), threads, torch_version])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- measuring ---------------------------------------------------------------------------------


def _best_seconds(run: Callable[[], object], sync: Callable[[], None], threads: int,
                  budget_s: float = RUN_BUDGET_S) -> tuple[float, float]:  # fmt: skip
    """The fastest of several timed runs after a warm-up (at least RUNS[0], more while within
    `budget_s`, at most RUNS[1]), and the share of its threads' time the process got over all
    runs (below 1 when other processes took the cores; 1 when `threads` is 0: not measured)."""
    run()
    sync()
    best, spent, cpu, runs = float("inf"), 0.0, 0.0, 0
    while runs < RUNS[0] or (runs < RUNS[1] and spent < budget_s):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        sync()
        elapsed = time.perf_counter() - start
        best, spent, cpu, runs = min(best, elapsed), spent + elapsed, cpu + time.process_time() - start_cpu, runs + 1
    return best, min(1.0, cpu / (spent * threads)) if threads else 1.0


def _decode_products(torch, dtype, threads: int, generator) -> tuple[dict[str, float], str, float]:
    """Weight bytes/s of decode-shaped products x[b, in] @ W[in, out] for each b in DECODE_BATCHES,
    the x of each batch multiplied by every one of DECODE_BYTES of weight matrices in turn (so each
    pass streams them all from memory, as a decode step streams a model's): through torch's oneDNN
    linear on weights prepacked for it (torch.ops.mkldnn; vLLM's CPU engine prepacks its linear
    layers for oneDNN the same way) where this torch has it and it agrees with torch's linear, else
    torch's linear. Returns the figures by batch, the kernel's name and the least share of the
    cores the runs got."""
    import torch.nn.functional as F

    inner, outer = DECODE_SHAPE
    dtype_name = str(dtype).removeprefix("torch.")
    weights = [torch.rand(outer, inner, generator=generator).to(dtype)
               for _ in range(max(1, DECODE_BYTES // (inner * outer * dtype.itemsize)))]  # fmt: skip
    streamed = sum(w.numel() * w.element_size() for w in weights)
    product, kernel = F.linear, f"torch linear {dtype_name}"
    try:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w) for w in weights]
        onednn = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")  # noqa: E731
        probe = torch.rand(1, inner, generator=generator).to(dtype)
        if torch.allclose(onednn(probe, packed[0]).float(), F.linear(probe, weights[0]).float(), rtol=0.02, atol=0.05):
            weights, product, kernel = packed, onednn, f"onednn prepacked {dtype_name}"
        del packed
    except (AttributeError, RuntimeError):
        pass
    figures, shares = {}, []
    for batch in DECODE_BATCHES:
        x = torch.rand(batch, inner, generator=generator).to(dtype)

        def step() -> None:
            for w in weights:
                product(x, w)

        seconds, share = _best_seconds(step, lambda: None, threads, DECODE_BUDGET_S)
        figures[str(batch)], shares = streamed / seconds, shares + [share]
    return figures, kernel, min(shares)


def measure(device: str = "cpu", threads: int | None = None) -> HostSpeed:
    """Measure this machine's device now (a few seconds on a CPU, about one on a GPU)."""
    import torch

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if device == "cpu":
        threads = threads or engine_threads()
        torch.set_num_threads(threads)
        name, flags = cpu_info()
        dtypes = ([torch.bfloat16] if cpu_supports_bf16(flags) else []) + [torch.float32]
        sync = lambda: None  # noqa: E731
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device here")
        threads = previous_threads
        name, flags = torch.cuda.get_device_name(0), []
        dtypes = [torch.bfloat16, torch.float32]
        sync = torch.cuda.synchronize
    else:
        raise ValueError(f"device {device!r}: expected cpu or cuda")
    shares: dict[str, float] = {}
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        data = torch.rand(READ_BYTES[device] // 4, generator=generator, device=device)
        read, shares["read"] = _best_seconds(data.sum, sync, threads if device == "cpu" else 0)
        read_bytes_s = bandwidth = data.numel() * data.element_size() / read
        del data
        decode, kernel = {}, ""
        if device == "cpu":  # what a decode step streams the weights at, in the engine's dtype
            decode, kernel, shares["decode"] = _decode_products(torch, dtypes[0], threads, generator)
            bandwidth = min(decode.values())
        tokens, inner, outer = MATMUL_SHAPE[device]
        flops = {}
        for dtype in dtypes:
            dtype_name = str(dtype).removeprefix("torch.")
            x = torch.rand(tokens, inner, generator=generator, device=device).to(dtype)
            w = torch.rand(outer, inner, generator=generator, device=device).to(dtype)
            allow_tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (vLLM's CPU engine has no TF32)
            try:
                seconds, shares[dtype_name] = _best_seconds(lambda: torch.nn.functional.linear(x, w), sync,
                                                            threads if device == "cpu" else 0)  # fmt: skip
            finally:
                torch.backends.cuda.matmul.allow_tf32 = allow_tf32
            flops[dtype_name] = 2 * tokens * inner * outer / seconds
    finally:
        torch.set_num_threads(previous_threads)
    return HostSpeed(
        device=device, name=name, threads=threads, bandwidth_bytes_s=bandwidth, flops=flops,
        seconds=round(time.perf_counter() - started, 3),
        measured_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        torch_version=torch.__version__, cpu_share=round(min(shares.values()), 3), key=machine_key(device, name, flags, threads, torch.__version__),
        shapes={"matmul_tokens_in_out": [tokens, inner, outer], "read_bytes": [READ_BYTES[device]]}
        | ({"decode_in_out": list(DECODE_SHAPE), "decode_batches": list(DECODE_BATCHES),
            "decode_bytes": [DECODE_BYTES]} if decode else {}),
        read_bytes_s=read_bytes_s, decode_bytes_s=decode, decode_kernel=kernel,
    )  # fmt: skip


# --- the cache ---------------------------------------------------------------------------------


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    root = env.get("PALISERVE_CACHE") or os.path.join(
        env.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "paliserve"
    )
    return Path(root) / "host-probe"


def current_key(device: str = "cpu", threads: int | None = None) -> str:
    import torch

    if device == "cpu":
        name, flags = cpu_info()
        threads = threads or engine_threads()
    else:
        name, flags, threads = torch.cuda.get_device_name(0), [], torch.get_num_threads()
    return machine_key(device, name, flags, threads, torch.__version__)


def cached_speed(directory: Path | None = None, device: str = "cpu", threads: int | None = None,
                 measure_now: Callable[[str, int | None], HostSpeed] = measure) -> tuple[HostSpeed, str]:  # fmt: skip
    """This machine's figures and where they came from ("cache <file>", "probe, cached in <file>"
    or "probe under load, not cached"): the cached ones when the file for this machine's key holds
    a valid probe, else a new measurement, written atomically (a corrupt file is replaced) unless
    other processes held the cores while it ran."""
    directory = cache_root() if directory is None else directory
    key = current_key(device, threads)
    path = directory / f"{key}.json"
    try:
        speed = HostSpeed.from_json(json.loads(path.read_text()))
        if speed.key == key and speed.probe_version == PROBE_VERSION:
            return speed, f"cache {path}"
    except (OSError, ValueError):
        pass
    speed = measure_now(device, threads)
    if speed.contended:
        return speed, "probe under load, not cached"
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(asdict(speed), indent=2) + "\n")
    os.replace(partial, path)
    return speed, f"probe, cached in {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: as many as vLLM's CPU engine uses here)")
    parser.add_argument("--cache", action="store_true",
                        help="reuse this machine's cached figures (PALISERVE_CACHE/host-probe), measuring only when absent")
    args = parser.parse_args(argv)
    if args.cache:
        speed, source = cached_speed(device=args.device, threads=args.threads)
    else:
        speed, source = measure(args.device, args.threads), "probe"
    print(json.dumps(asdict(speed) | {"source": source}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
