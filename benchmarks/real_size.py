"""Real size: the planner against vLLM and against what a real-size stack measures on this machine.

Builds a random-weight checkpoint with a catalog model's exact architecture (`paliserve
random-checkpoint`, cached under $PALISERVE_CACHE/real-size/), plans it (`paliserve plan --json`,
as a user would, at concurrency 1 and 4; then again with a profile that `paliserve profile`
measures on the same checkpoint), serves it with `paliserve up --model DIR --detach` and prints,
side by side, the planner's figures, vLLM's own (its log lines and its cache-config gauge) and
what was measured: parameters, weight bytes, image tokens, KV bytes per token, KV tokens, block
size, peak RAM of each process of the stack (VmHWM of every process under `ray start`, by role)
and of the whole stack (the largest sum of their RSS, sampled twice a second), and TTFT/TPOT at
concurrency 1 and 4 (the official openai client, streaming, a different 224 px noise image per
request so that no prefix is cached). Each figure's error against its target (RAM 10%, KV tokens
2%, speed 25% uncalibrated and 15% calibrated) and a machine-speed control before and after.

The memory figures are autoscale/memory.py's for the served settings (what `paliserve up` checks
before it starts); the speed figures are the plan's `predicted` at the planned batch (with the
host probe, when the planner has one, and no SLO binding). At concurrency 4 the speed rows with a
target are the planner model's closed loop (`ReplicaPerformance.closed_loop` of the same sizing,
computed here in-process and checked against the plan's figures): the plan's own figures assume
independent arrivals, which the loop below is not; they are printed beside it without a target.

Concurrency 4 is measured as the planner models it (autoscale/performance.py): a steady state in
which 4 requests are in flight and each request's decode shares its steps with the others'
decodes and, once each, with the prefill of the request that replaces each of them. So: a closed
loop of 4 clients, each sending its next request when its previous reply ends, their starts
staggered by a quarter of c=1's mean request time (4 requests of one length started together
stay in lockstep instead: each waits for the others' prefills, and no prefill shares a step with a
decode), and the mean of the requests sent while all 4 were in flight (steady_state: each client's
first request and the ramp-down left out; the output says how many). The measured mean TTFT is
held against the plan's mean (`predicted.ttft_mean_ms`: a prefill, a step and the queue's mean
wait; autoscale/performance.py), not its p95.

    .venv/bin/python benchmarks/real_size.py [--model paligemma-3b-pt-224] [--skip-profile]

It needs about 17 GiB of RAM available (it waits up to 10 minutes for it) and 8 GB of disk.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _control import machine_speed  # noqa: E402

from benchmarks._comparison import Row, missed, render, run_clients, steady_state  # noqa: E402  (as gpu_check.py)
from benchmarks.gpu_check import KV_TOKENS  # noqa: E402  (vLLM's KV line: one pattern)
from serve.cluster import free_port  # noqa: E402

GIB = 2**30
PALISERVE = str(Path(sys.executable).with_name("paliserve"))
TARGETS = {"ram": 0.10, "kv": 0.02, "speed": 0.25, "speed calibrated": 0.15}
MIN_AVAILABLE = 17 * GIB
RAM_WAIT_S, RAM_POLL_S = 600, 30
KV_GIB = 1  # what `paliserve up --model` gives a CPU replica (VLLM_CPU_KVCACHE_SPACE)
MAX_NUM_SEQS = 64
BATCHED_TOKENS = 2048
NO_SLO_MS = 10**7  # an SLO that never binds: the plan's batch is the concurrency

# ---- vLLM's figures: its log lines and its cache-config gauge ---------------------------------

CHECKPOINT = re.compile(r"Checkpoint size: (?P<gib>[\d.]+) GiB")
KV_SPACE = re.compile(r"Explicitly set \((?P<gib>[\d.]+)/[\d.]+\) GiB for KV cache")
LOAD_TIME = re.compile(r"Loading weights took (?P<s>[\d.]+) seconds")
CACHE_CONFIG = re.compile(r"^\w*vllm[:_]cache_config_info\{(?P<labels>[^}]*)\}", re.MULTILINE)
BLOCK_LABEL = re.compile(r'\bblock_size="(?P<n>\d+)"')


@dataclass
class VllmFigures:
    kv_tokens: int | None = None
    checkpoint_gib: float | None = None
    kv_space_gib: float | None = None
    load_s: float | None = None
    block_size: int | None = None


def parse_vllm_log(text: str) -> VllmFigures:
    """What vLLM's engine logs at start-up (the last of each line, for a log of several starts)."""

    def last(pattern: re.Pattern, group: str, kind=float):
        found = pattern.findall(text) if pattern.groups == 1 else [m.group(group) for m in pattern.finditer(text)]
        return kind(found[-1].replace(",", "")) if found else None

    return VllmFigures(
        kv_tokens=last(KV_TOKENS, "tokens", int),
        checkpoint_gib=last(CHECKPOINT, "gib"),
        kv_space_gib=last(KV_SPACE, "gib"),
        load_s=last(LOAD_TIME, "s"),
    )


def block_size_from_metrics(text: str) -> int | None:
    """The block size in vLLM's cache-config info gauge, as Ray exports it (`ray_vllm_cache_config_info`)."""
    for match in CACHE_CONFIG.finditer(text):
        label = BLOCK_LABEL.search(match.group("labels"))
        if label:
            return int(label.group("n"))
    return None


def engine_logs(temp_dir: str) -> str:
    logs = Path(temp_dir) / "session_latest" / "logs"
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("worker-*")) if p.suffix in (".out", ".err"))


# ---- RAM of the stack's processes ------------------------------------------------------------

ROLES = (("VLLM::EngineCore", "engine"), ("ServeReplica", "front end"))  # the model runs in the engine core
PROCESS_ROLES = ("engine", "front end", "Ray")


def role_of(cmdline: str) -> str:
    """The part of the stack a process under `ray start` is; every other one is Ray's own."""
    return next((role for marker, role in ROLES if marker in cmdline), "Ray")


def peak_rss(status: str) -> int | None:
    """VmHWM (the process's peak RSS) from the text of /proc/<pid>/status, in bytes."""
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


@dataclass
class RamSampler:
    """Samples every process of the stack: the descendants of `paliserve up` while it starts them,
    then those of the `ray start` process (which outlives `up --detach`); also polls Ray's metrics
    port, once cluster.json names it, for vLLM's cache-config gauge (set once, at the engine's start)."""

    up_pid: int
    state: Path
    interval_s: float = 0.5
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (role, VmHWM)
    names: dict[int, str] = field(default_factory=dict)  # pid -> command line
    total_peak: int = 0
    block_size: int | None = None
    root_pid: int | None = None  # the `ray start` process
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> RamSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def by_role(self) -> dict[str, int]:
        sums = dict.fromkeys(PROCESS_ROLES, 0)
        for role, peak in self.peaks.values():
            sums[role] += peak
        return sums

    def _processes(self):
        import psutil

        found = {}
        for pid in (self.up_pid, self.root_pid):
            if pid is None:  # psutil.Process(None) is this process
                continue
            try:
                found.update((p.pid, p) for p in psutil.Process(pid).children(recursive=True))
                if pid == self.root_pid:
                    found[pid] = psutil.Process(pid)
            except psutil.Error:
                continue
        for proc in found.values():
            if self.root_pid is None and "ray start" in " ".join(proc.cmdline()):
                self.root_pid = proc.pid
        return list(found.values())

    def _run(self) -> None:
        import httpx
        import psutil

        next_metrics = 0.0
        while not self._stop.is_set():
            total = 0
            for proc in self._processes():
                try:
                    rss = proc.memory_info().rss
                    cmdline = " ".join(proc.cmdline()) or proc.name()
                    hwm = peak_rss(Path(f"/proc/{proc.pid}/status").read_text())
                except (psutil.Error, OSError):
                    continue
                total += rss
                old = self.peaks.get(proc.pid, ("", 0))[1]
                self.peaks[proc.pid] = (role_of(cmdline), max(old, hwm or rss))
                self.names[proc.pid] = cmdline
            self.total_peak = max(self.total_peak, total)
            if self.block_size is None and time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + 2
                try:
                    port = json.loads(self.state.read_text())["metrics_port"]
                    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                    self.block_size = block_size_from_metrics(text)
                except (OSError, ValueError, KeyError, httpx.HTTPError):
                    pass
            self._stop.wait(self.interval_s)


# ---- requests --------------------------------------------------------------------------------


def image_url(seed: int, size: int) -> str:
    """Noise, different per seed: vLLM caches prefixes by image, so a repeated image would skip prefill."""
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    tpot_s: float
    prompt_tokens: int
    completion_tokens: int
    started: float = 0.0  # time.perf_counter() when the request was sent
    ended: float = 0.0  # ... and when its stream ended
    client: int = 0  # which client of the closed loop sent it
    index: int = 0  # that client's n-th request (0: its first)

    @property
    def e2e_s(self) -> float:
        return self.ended - self.started


def one_request(client, model: str, url: str, prompt: str, output_tokens: int, who: int = 0, index: int = 0) -> Sample:
    started = time.perf_counter()
    stamps, usage = [], None
    stream = client.chat.completions.create(
        model=model, max_tokens=output_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": prompt},
                                               {"type": "image_url", "image_url": {"url": url}}]}],
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage:
            usage = chunk.usage
    ended = time.perf_counter()
    if len(stamps) < 2 or usage is None:
        raise RuntimeError(f"a streamed reply with {len(stamps)} content chunks and usage {usage}")
    return Sample(stamps[0] - started, (stamps[-1] - stamps[0]) / (len(stamps) - 1), usage.prompt_tokens,
                  usage.completion_tokens, started, ended, who, index)  # fmt: skip


def closed_loop(base_url: str, model: str, concurrency: int, requests: int, prompt: str, output_tokens: int,
                image_size: int, seed: int, stagger_s: float = 0.0) -> list[Sample]:  # fmt: skip
    """`concurrency` clients, each sending `requests` requests one after another (a closed loop),
    client i starting i x `stagger_s` after the first. Every sample, warm-up included (see
    steady_state for which to keep)."""
    from openai import OpenAI

    urls = [image_url(seed + i, image_size) for i in range(concurrency * requests)]
    samples: list[Sample] = []

    def client_loop(k: int) -> None:
        client = OpenAI(base_url=base_url, api_key="unused", timeout=600, max_retries=0)
        time.sleep(k * stagger_s)
        for r in range(requests):
            samples.append(one_request(client, model, urls[k * requests + r], prompt, output_tokens, k, r))

    run_clients(concurrency, client_loop)
    return sorted(samples, key=lambda s: s.started)


# ---- the planner -----------------------------------------------------------------------------


def planned(model_id: str, concurrency: int, prompt_tokens: int, output_tokens: int, profile: Path | None) -> dict:
    """`paliserve plan --json` for one tenant on the catalog `cpu`, as a user runs it."""
    command = [PALISERVE, "plan", "--json", "--model", model_id, "--gpu", "cpu", "--gpu-count", "1",
               "--concurrency", str(concurrency), "--prompt-tokens", str(prompt_tokens),
               "--output-tokens", str(output_tokens), "--ttft-ms", str(NO_SLO_MS), "--tpot-ms", str(NO_SLO_MS)]  # fmt: skip
    if profile is not None:
        command += ["--profile", str(profile)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)["deployments"][0]


def planned_closed_loop(model_id: str, concurrency: int, prompt_tokens: int, output_tokens: int,
                        profile: Path | None, plan: dict) -> dict:  # fmt: skip
    """The planner model's closed loop at the plan's batch (autoscale/performance.py,
    ReplicaPerformance.closed_loop), from the sizing `paliserve plan` makes for the same arguments,
    redone here in-process with the same host figures (this machine's probe cache, filled by
    settle_host_probe before the plans) and profile. Its figures at the batch must be the plan's:
    None when they are not (a probe under load is not cached, so the plan command measured again)."""
    from autoscale.catalog import HostFigures, accelerator_of
    from autoscale.cli import _one_tenant_spec
    from autoscale.demand import demands
    from autoscale.host_probe import cached_speed
    from autoscale.profile import load_profile
    from autoscale.sizing import size_deployment

    spec = _one_tenant_spec(model_id, "cpu", 1, concurrency, None, prompt_tokens, output_tokens, NO_SLO_MS, NO_SLO_MS)
    speed, where = cached_speed()
    host = HostFigures(speed.bandwidth_bytes_s, tuple(speed.flops.items()), where)
    measured = (load_profile(profile), f"profile {profile}") if profile is not None else None
    sizing = size_deployment(demands(spec)[0], accelerator_of(spec.gpus[0], host=host), spec.planner, measured)
    batch, perf, load = sizing.planned_batch, sizing.perf, sizing.load
    mine = {"ttft_mean_ms": perf.ttft_mean_s(batch, load) * 1e3, "tpot_ms": perf.tpot_s(batch, load) * 1e3}
    if any(abs(mine[k] / plan["predicted"][k] - 1) > 0.005 for k in mine):
        return None
    loop = perf.closed_loop(batch, load)
    return {"batch": batch, "ttft_mean_ms": loop.ttft_s * 1e3, "tpot_ms": loop.tpot_s * 1e3,
            "wait_ms": loop.wait_s * 1e3, "share_in_ttft": loop.share_in_ttft}  # fmt: skip


def settle_host_probe(say, tries: int = 3, pause_s: float = 30) -> None:
    """Have this machine's host probe in the cache before the plans, so that they and the
    in-process closed loop read the same figures: a probe under load is not cached, so measure
    again (at most `tries` times, `pause_s` apart) until one is."""
    from autoscale.host_probe import cached_speed

    for attempt in range(tries):
        speed, where = cached_speed()
        say(f"host probe: {speed.describe()} ({where})")
        if not speed.contended:
            return
        if attempt + 1 < tries:
            time.sleep(pause_s)


def memory_model(arch, dtype: str):
    """autoscale/memory.py's figures for what `paliserve up --model` serves on a CPU."""
    from autoscale.memory import cpu_serving_memory

    return cpu_serving_memory(arch, dtype, KV_GIB * GIB, BATCHED_TOKENS, MAX_NUM_SEQS)


# ---- the table -------------------------------------------------------------------------------


def table_rows(arch, dtype: str, text_tokens: int, checkpoint_metadata: dict, memory, served: dict,
               plans: dict, calibrated: dict) -> list[Row]:  # fmt: skip
    """Planner vs vLLM vs measured. `served`: serve_and_measure's result; `plans`/`calibrated`: the
    planned deployment (JSON) per concurrency."""
    from autoscale.memory import DTYPE_BYTES, kv_bytes_per_token, kv_tokens, param_counts, vllm_block_size, weight_bytes

    vllm: VllmFigures = served["vllm"]
    per_token = kv_bytes_per_token(arch.text, DTYPE_BYTES[dtype])
    block = vllm_block_size("cpu")
    image_tokens_served = served["warm_up"].prompt_tokens - text_tokens - 2  # <bos> and "\n" frame the text
    rows = [
        Row("parameters", param_counts(arch).total, None, checkpoint_metadata["total_parameters"]),
        Row("weight bytes", weight_bytes(arch, dtype) / GIB, vllm.checkpoint_gib,
            checkpoint_metadata["total_size"] / GIB, unit="GiB", fmt="{:.2f}"),
        Row("image tokens", arch.vision.image_tokens, image_tokens_served, None),
        Row("KV bytes/token (vLLM: space / tokens)", per_token,
            vllm.kv_space_gib * GIB / vllm.kv_tokens if vllm.kv_tokens and vllm.kv_space_gib else None, None,
            fmt="{:,.1f}"),
        Row("KV tokens", kv_tokens(KV_GIB * GIB, per_token, block), vllm.kv_tokens, None, TARGETS["kv"]),
        Row("block size", block, vllm.block_size, None),
    ]  # fmt: skip
    predicted = memory.processes()
    for role in PROCESS_ROLES:
        rows.append(Row(f"peak RAM {role}", predicted[role] / GIB, None, served["ram"][role] / GIB, TARGETS["ram"], "GiB",
                        "{:.2f}"))  # fmt: skip
    rows.append(Row("peak RAM stack", memory.total / GIB, None, served["ram_total"] / GIB, TARGETS["ram"], "GiB", "{:.2f}"))
    for c in (1, 4):
        samples = served["levels"][c]
        ttft = statistics.mean(s.ttft_s for s in samples) * 1e3
        tpot = statistics.mean(s.tpot_s for s in samples) * 1e3
        # a request's whole time, TTFT + (n - 1) x TPOT (what the planner's throughput is): a prefill
        # that another request waits for is in its TTFT, one that stalls its decode in its TPOT
        n = statistics.mean(s.completion_tokens for s in samples)
        e2e = statistics.mean(s.e2e_s for s in samples) * 1e3
        for suffix, plan, target in (("", plans[c], TARGETS["speed"]),
                                     (", calibrated", calibrated.get(c), TARGETS["speed calibrated"])):  # fmt: skip
            if plan is None:
                continue
            # the measured mean against the planner's mean (its p95 is for the most demanding prompt)
            ttft_planned, tpot_planned = plan["predicted"]["ttft_mean_ms"], plan["predicted"]["tpot_ms"]
            if "closed_loop" in plan:  # c > 1: the plan's independent arrivals beside, the closed loop held
                for what, planned_ms, measured_ms in (("TTFT", ttft_planned, ttft), ("TPOT", tpot_planned, tpot),
                                                      ("E2E", ttft_planned + (n - 1) * tpot_planned, e2e)):  # fmt: skip
                    rows.append(Row(f"{what} c={c}{suffix}, plan (independent arrivals)", planned_ms, None,
                                    measured_ms, None, "ms"))  # fmt: skip
                ttft_planned, tpot_planned = plan["closed_loop"]["ttft_mean_ms"], plan["closed_loop"]["tpot_ms"]
            rows.append(Row(f"TTFT c={c}{suffix}", ttft_planned, None, ttft, target, "ms"))
            rows.append(Row(f"TPOT c={c}{suffix}", tpot_planned, None, tpot, target, "ms"))
            rows.append(Row(f"E2E c={c}{suffix}", ttft_planned + (n - 1) * tpot_planned, None, e2e, target, "ms"))
    return rows


# ---- running it ------------------------------------------------------------------------------


def wait_for_ram(need: int, say) -> None:
    import psutil

    deadline = time.monotonic() + RAM_WAIT_S
    while (available := psutil.virtual_memory().available) < need:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {available / GIB:.1f} GiB of RAM available after {RAM_WAIT_S} s; need {need / GIB:.1f}")
        say(f"waiting for RAM: {available / GIB:.1f} GiB available, need {need / GIB:.1f} GiB")
        time.sleep(RAM_POLL_S)


def checkpoint_dir(cache: Path, model_id: str, dtype: str, expected_params: int, say) -> Path:
    path = cache / "real-size" / f"{model_id}-{dtype}"
    index = path / "model.safetensors.index.json"
    if index.exists() and json.loads(index.read_text())["metadata"].get("total_parameters") == expected_params:
        say(f"checkpoint: reusing {path}")
        return path
    started = time.monotonic()
    done = subprocess.run([PALISERVE, "random-checkpoint", model_id, str(path), "--dtype", dtype],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"random-checkpoint failed: {done.stderr[-2000:]}")
    say(f"checkpoint: built {path} in {time.monotonic() - started:.0f} s")
    return path


def run_profile(checkpoint: Path, model_id: str, dtype: str, out: Path, say) -> None:
    started = time.monotonic()
    command = [PALISERVE, "profile", "--checkpoint", str(checkpoint), "--model", model_id, "--accelerator", "cpu",
               "--dtype", dtype, "--prompt-tokens", "4,16,64", "--batches", "1,2,4", "--decode-tokens", "16",
               "--repeats", "2", "-o", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"paliserve profile failed: {done.stderr[-3000:]}")
    say(f"profile: {out} in {time.monotonic() - started:.0f} s")


def serve_and_measure(checkpoint: Path, dtype: str, image_size: int, state_dir: Path, args, say) -> dict:
    port = free_port()
    env = {**os.environ, "PALISERVE_CACHE": str(state_dir)}
    state = state_dir / "cluster.json"
    state.unlink(missing_ok=True)
    started = time.monotonic()
    up = subprocess.Popen([PALISERVE, "up", "--model", str(checkpoint), "--device", "cpu", "--dtype", dtype, "--detach",
                           "--port", str(port), "--max-model-len", str(args.max_model_len), "--no-prometheus"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    sampler = RamSampler(up.pid, state).start()
    result: dict = {}
    try:
        _, stderr = up.communicate(timeout=1800)
        result["up_s"] = time.monotonic() - started
        if up.returncode != 0:
            raise SystemExit(f"paliserve up failed ({up.returncode}): {stderr[-3000:]}")
        say(f"serving on port {port} after {result['up_s']:.0f} s")
        base_url = f"http://127.0.0.1:{port}/v1"
        model = checkpoint.name
        warm = closed_loop(base_url, model, 1, 1, args.prompt, 2, image_size, seed=10_000)
        result["warm_up"] = warm[0]
        levels, result["discarded"], result["stagger_s"] = {}, {}, {}
        stagger = 0.0
        for concurrency, requests in ((1, args.requests_c1), (4, args.requests_c4 + 1)):
            # c=4: one warm-up request per client, the clients' starts staggered over one request's
            # time at c=1 (started together, requests of one length stay in lockstep: each waits
            # for the others' prefills and no prefill shares a step with a decode)
            samples = closed_loop(base_url, model, concurrency, requests, args.prompt, args.output_tokens,
                                  image_size, seed=concurrency * 1000, stagger_s=stagger)  # fmt: skip
            levels[concurrency], result["discarded"][concurrency] = steady_state(samples, concurrency)
            if concurrency == 1:
                result["discarded"][concurrency] += "; the 2-token warm-up request is apart"
            result["stagger_s"][concurrency] = stagger
            origin = samples[0].started
            for x in samples:
                say(f"  c={concurrency} client {x.client} request {x.index}: sent +{x.started - origin:.1f} s, "
                    f"TTFT {x.ttft_s:.2f} s, TPOT {x.tpot_s * 1e3:.0f} ms, ended +{x.ended - origin:.1f} s"
                    + ("" if any(x is k for k in levels[concurrency]) else "  (discarded)"))  # fmt: skip
            s = levels[concurrency]
            if not s:
                raise SystemExit(f"c={concurrency}: no request in the steady state; raise --requests-c4")
            say(f"c={concurrency}: {len(s)} requests kept, TTFT mean {statistics.mean(x.ttft_s for x in s):.2f} s, "
                f"TPOT mean {statistics.mean(x.tpot_s for x in s) * 1e3:.0f} ms; discarded {result['discarded'][concurrency]}")  # fmt: skip
            stagger = statistics.mean(x.e2e_s for x in s) / 4  # c=1's mean request time, over 4 clients
        result["levels"] = levels
        info = json.loads(state.read_text())
        result["vllm"] = parse_vllm_log(engine_logs(info["temp_dir"]))
    finally:
        sampler.stop()
        if up.poll() is None:
            up.terminate()  # `up` stops what it started when stopped while starting
            up.wait(timeout=300)
        down = subprocess.run([PALISERVE, "down"], env=env, capture_output=True, text=True, timeout=300)
        if down.returncode != 0:
            say(f"paliserve down: {down.stderr[-1000:]}")
        if sampler.root_pid is not None:  # e.g. `up` stopped before it recorded the cluster
            from serve.cluster import stop_process_tree

            stop_process_tree(sampler.root_pid)
    if "vllm" in result:
        result["vllm"].block_size = sampler.block_size
    result["ram"] = sampler.by_role()
    result["ram_total"] = sampler.total_peak
    result["ram_by_process"] = sorted(((peak, role, sampler.names.get(pid, "?")[:90]) for pid, (role, peak) in sampler.peaks.items()),
                                      reverse=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="paligemma-3b-pt-224", help="catalog id of the architecture")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--prompt", default="caption en")
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--requests-c1", type=int, default=4, help="requests at concurrency 1")
    parser.add_argument("--requests-c4", type=int, default=3,
                        help="requests per client at concurrency 4 after each client's warm-up request")
    parser.add_argument("--skip-profile", action="store_true", help="no calibrated column (saves ~3 minutes)")
    parser.add_argument("--profile", type=Path, help="use this profile instead of measuring one")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the stack is stopped on the way out

    from autoscale.memory import param_counts
    from paliserve.local import cache_dir
    from paliserve.random_checkpoint import catalog_architecture

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    control_before = machine_speed()
    say(f"machine-speed control: {control_before:.3f} s")
    arch = catalog_architecture(args.model)
    params = param_counts(arch).total
    cache = cache_dir()
    work = cache / "real-size"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_dir(cache, args.model, args.dtype, params, say)
    from transformers import AutoTokenizer

    text_tokens = len(AutoTokenizer.from_pretrained(checkpoint)(args.prompt, add_special_tokens=False).input_ids)

    memory = memory_model(arch, args.dtype)
    need = max(MIN_AVAILABLE, memory.total + GIB)
    profile = args.profile
    if profile is None and not args.skip_profile:
        profile = work / f"profile-{args.model}-{args.dtype}.yaml"
        wait_for_ram(need, say)
        run_profile(checkpoint, args.model, args.dtype, profile, say)
    settle_host_probe(say)
    plans = {c: planned(args.model, c, text_tokens, args.output_tokens, None) for c in (1, 4)}
    calibrated = {c: planned(args.model, c, text_tokens, args.output_tokens, profile) for c in (1, 4)} if profile else {}
    for c in (4,):  # the closed loop's figures beside the plan's (module docstring)
        for plan, used in ((plans[c], None), (calibrated.get(c), profile)):
            loop = None if plan is None else planned_closed_loop(args.model, c, text_tokens, args.output_tokens, used, plan)
            if plan is not None and loop is None:
                say(f"c={c}: the in-process sizing is not the plan's (its host probe was under load and not "
                    f"cached): no closed-loop figures, the plan's are held")  # fmt: skip
            elif loop is not None:
                plan["closed_loop"] = loop
                say(f"c={c}{'' if used is None else ', calibrated'}: closed loop at batch {plan['closed_loop']['batch']}: "
                    f"{plan['closed_loop']['wait_ms']:.0f} ms wait ({plan['closed_loop']['share_in_ttft']:.0%} of the "
                    f"other requests' prefills in TTFT)")  # fmt: skip

    wait_for_ram(need, say)
    served = serve_and_measure(checkpoint, args.dtype, arch.vision.image_size, work / "state", args, say)
    control_after = machine_speed()
    say(f"machine-speed control: {control_after:.3f} s")

    vllm: VllmFigures = served["vllm"]
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    rows = table_rows(arch, args.dtype, text_tokens, index["metadata"], memory, served, plans, calibrated)
    warm = served["warm_up"]
    print(f"\nbenchmarks/real_size.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"{args.model} random weights, {args.dtype}, served by `paliserve up --model DIR` on the CPU "
          f"(KV cache {KV_GIB} GiB, max_model_len {args.max_model_len}); prompt {args.prompt!r} "
          f"({text_tokens} text tokens), {args.output_tokens} output tokens, ignore_eos")  # fmt: skip
    print(f"plan: dtype {plans[1]['engine_args']['dtype']}, {plans[1]['calibration']}")
    if calibrated:
        print(f"calibrated plan: {calibrated[1]['calibration']}")
    print(f"up to serving {served['up_s']:.0f} s (vLLM loaded the weights in {vllm.load_s} s); first request "
          f"TTFT {warm.ttft_s:.1f} s; {warm.prompt_tokens} prompt tokens")  # fmt: skip
    print(f"c=1: {args.requests_c1} requests one after another. c=4: a closed loop of 4 clients, each sending "
          f"{args.requests_c4 + 1} requests one after another, their starts {served['stagger_s'][4]:.1f} s apart (c=1's "
          f"mean request time / 4); the mean of the {len(served['levels'][4])} requests in the steady state "
          f"(all 4 in flight), discarded: {served['discarded'][4]}")  # fmt: skip
    print(render(rows))
    print("peak RSS by process: " + "; ".join(f"{name} ({role}) {peak / GIB:.2f} GiB"
                                               for peak, role, name in served["ram_by_process"] if peak >= 0.05 * GIB))  # fmt: skip
    print(f"machine-speed control (benchmarks/_control.py): {control_before:.3f} s before, {control_after:.3f} s after")
    samples = {c: [dataclasses.asdict(x) | {"e2e_s": x.e2e_s} for x in v] for c, v in served["levels"].items()}
    (work / "last-run.json").write_text(json.dumps({"samples_kept": samples, "discarded": served["discarded"],
                                                    "stagger_s": served["stagger_s"]}, indent=1))  # fmt: skip
    print("targets: " + ("all met" if not missed(rows) else f"not met: {', '.join(missed(rows))}"))


if __name__ == "__main__":
    main()
