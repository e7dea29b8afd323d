"""Serving overhead: the engine in-process, vLLM's own OpenAI server, and paliserve's full stack.

Same machine, same tiny model, same client and request (28x28 image, "caption en", 16 generated
tokens, temperature 0), measured one setup after another so that no idle engine competes for
the cores. Every server is started the same way as far as the kernel's scheduling goes: from
this process's login session, in a process group of its own (`serve.processes.start_service`,
which is how `paliserve up` starts Ray); under session-based scheduling (autogroup) a server
in a session of its own would be handicapped or favoured against the client. paliserve runs
as `paliserve up` runs a one-model plan (HAProxy in front of the colocated gateway and engine),
the same with one tenant (API key checked, fair gate, tenant metrics) and with never-refusing
quotas, with the gateway as a deployment of its own (plans with several models or adapters),
and behind Serve's Python proxy instead of HAProxy. Prints p50/p95 latency at concurrency 1 and
requests/s and tokens/s at concurrency 16, the ratios against vLLM's server (the baseline a
user would otherwise pick), and a machine-speed control before each setup.

vLLM's server runs twice over: as a user starts it (`vllm serve`, vLLM's defaults: on CPUs a
worker process pinned to a core beside the engine core, both spin-waiting), and with the engine
settings paliserve's CPU replicas run (`paliserve/cpu_engine.py`: the model in the engine core
process, on the threads vLLM gives its worker). paliserve is compared with both: the first is what a user
would otherwise get, the second the same engine, so its ratio is what paliserve's serving path
costs or saves.

With `--starts N` every setup is started N times, the setups taking turns (vLLM, paliserve,
vLLM, paliserve, ...): on these 2 cores one start-up of the same server was seen to serve 23%
more than the next (vLLM's CPU worker pins itself to a core and polls there, and where the other
processes land differs from one start to the next), so a ratio from one start of each is weaker
than the difference it measures. The figures are medians over the starts; the ratios are given
per start (each setup against vLLM's server of the same turn) and as the ratio of the medians.

    .venv/bin/python benchmarks/overhead.py [--starts 3] [--rounds 3] [--seconds 20] [--only vllm --only paliserve]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paliserve.cpu_engine import cpu_engine_env  # noqa: E402
from paliserve.local import tiny_plan  # noqa: E402
from paliserve.tiny_model import build_tiny_model  # noqa: E402
from serve.cluster import free_port, stop_process_tree, wait_until_healthy  # noqa: E402
from serve.processes import start_service  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _control import machine_speed  # noqa: E402

MAX_TOKENS = 16
MAX_NUM_SEQS = 64
MAX_MODEL_LEN = 512
IDLE_S = 10  # the serving stack's own CPU use is measured over this long with no request
SETTLE_CORES, SETTLE_MAX_S = 0.15, 120
BENCH_KEY = "sk-bench"
# limits the benchmark cannot reach: every admission is checked, none refused
NEVER_REFUSING = {"requests_per_min": 10_000_000, "tokens_per_min": 1_000_000_000, "max_concurrency": 10_000}
STARTED = ("started from this process's session, in a process group of its own "
           "(serve.processes.start_service)")  # fmt: skip
VLLM = "vLLM OpenAI server"
VLLM_ENGINE = "vLLM OpenAI server, paliserve's CPU engine settings"
OURS = "paliserve (HAProxy -> gateway+engine)"
TENANT = "paliserve, one tenant (key, fair gate)"
QUOTAS = "paliserve, one tenant with quotas"
SEPARATE = "paliserve (HAProxy -> gateway -> engine)"
PYTHON_PROXY = "paliserve (Serve proxy -> gateway+engine)"


def image():
    """Noise, on which the tiny model's greedy output runs to max_tokens (a plain colour ends at once)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((28, 28, 3)) * 255).astype("uint8"))


def chat_body(model: str) -> dict:
    import base64
    import io

    buf = io.BytesIO()
    image().save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [{"type": "text", "text": "caption en"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS, "temperature": 0}


# ---- load generation (one client for every setup) --------------------------------------------


def cpu_seconds(roots: tuple[int, ...]) -> dict[str, float]:
    """CPU seconds used so far by this process (the client) and by the processes `roots` and their
    descendants, by part of the serving path (a part's processes that exited are not counted)."""
    import psutil

    parts = {"client": sum(psutil.Process().cpu_times()[:2])}
    procs = []
    for pid in roots:
        root = psutil.Process(pid)
        procs += [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            name = " ".join(proc.cmdline()) or proc.name()
            used = sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue
        part = next((p for marker, p in PARTS if marker in name), None) or _other(proc, name)
        parts[part] = parts.get(part, 0.0) + used
    return parts


def _other(proc, cmdline: str) -> str:
    """A process outside the request path, named by what runs in it (Ray daemons, Serve's controller)."""
    words = cmdline.split()
    script = next((w for w in words[1:] if w.endswith(".py")), None)
    name = Path(script).stem if script and "python" in Path(words[0]).name else proc.name()
    return f"other: {name}"


# process markers (command line or title) -> the part of the serving path it is
PARTS = [("haproxy", "HAProxy"), ("EngineCore", "vLLM EngineCore"), ("ServeReplica", "Serve replica (gateway+engine front)"),
         ("vllm_cli", "vLLM API server (front end)"), ("serve.metrics_targets", "other: metrics-targets writer")]  # fmt: skip


async def settle(roots: tuple[int, ...]) -> float:
    """Wait (at most SETTLE_MAX_S) until the server's processes use under SETTLE_CORES with no
    request: Serve's controller was seen busy for a minute after a deployment turned healthy.
    Every setup waits the same way; returns the seconds waited."""
    start = time.perf_counter()
    while roots and time.perf_counter() - start < SETTLE_MAX_S:
        before = cpu_seconds(roots)
        await asyncio.sleep(3)
        after = cpu_seconds(roots)
        if sum(v - before.get(p, 0.0) for p, v in after.items() if p != "client") / 3 < SETTLE_CORES:
            break
    return time.perf_counter() - start


async def measure(call, rounds: int, seconds: float, roots: tuple[int, ...] = ()) -> dict:
    """`call()` sends one request and returns the generated token count. With `roots`, also the
    CPU milliseconds each part of the serving path spent per request at concurrency 16."""
    settled_s = await settle(roots)
    for _ in range(5):
        await call()
    idle_before = cpu_seconds(roots)
    await asyncio.sleep(IDLE_S)
    idle = {p: (used - idle_before.get(p, 0.0)) / IDLE_S for p, used in cpu_seconds(roots).items()}
    lat_rounds, rps_rounds, tps_rounds = [], [], []
    cpu_ms: dict[str, float] = {}
    requests_at_16 = 0
    for _ in range(rounds):
        latencies = []
        for _ in range(40):
            t = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t) * 1000)
        lat_rounds.append(latencies)
        done = tokens = 0
        deadline = time.perf_counter() + seconds

        async def worker():
            nonlocal done, tokens
            while time.perf_counter() < deadline:
                generated = await call()  # not `tokens += await ...`: that reads tokens before awaiting
                tokens += generated
                done += 1

        before = cpu_seconds(roots)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        elapsed = time.perf_counter() - start
        after = cpu_seconds(roots)
        for part, used in after.items():
            cpu_ms[part] = cpu_ms.get(part, 0.0) + (used - before.get(part, 0.0)) * 1000
        requests_at_16 += done
        if tokens != done * MAX_TOKENS:
            raise RuntimeError(f"expected {MAX_TOKENS} tokens per request, got {tokens / done:.1f} on average")
        rps_rounds.append(done / elapsed)
        tps_rounds.append(tokens / elapsed)
    p50s = [statistics.median(r) for r in lat_rounds]
    p95s = [statistics.quantiles(r, n=20)[18] for r in lat_rounds]
    return {
        "p50_ms": statistics.median(p50s),
        "p95_ms": statistics.median(p95s),
        "req_per_s": statistics.median(rps_rounds),
        "tok_per_s": statistics.median(tps_rounds),
        "cpu_ms_per_request": {part: used / requests_at_16 for part, used in cpu_ms.items()},
        "idle_cores": idle,
        "settled_s": settled_s,
    }


def http_call(client: httpx.AsyncClient, url: str, body: dict):
    async def call() -> int:
        reply = await client.post(url, json=body)
        reply.raise_for_status()
        return reply.json()["usage"]["completion_tokens"]

    return call


async def measure_http(url: str, model: str, rounds: int, seconds: float, key: str | None = None,
                       roots: tuple[int, ...] = ()) -> dict:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
        return await measure(http_call(client, url, chat_body(model)), rounds, seconds, roots)


# ---- the three setups ------------------------------------------------------------------------


async def in_process(model_dir: Path, rounds: int, seconds: float) -> dict:
    """The engine as a CPU replica runs it, called in this process (the settings are read when
    the engine starts and by its process, which inherits them; the servers started later do not)."""
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    args = tiny_plan(model_dir, max_num_seqs=MAX_NUM_SEQS, max_model_len=MAX_MODEL_LEN).deployments[0].engine_args
    saved = dict(os.environ)
    os.environ.update(cpu_engine_env(os.environ))
    try:
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args.vllm_kwargs()))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
    img = image()

    async def call() -> int:
        final = None
        prompt = {"prompt": "caption en", "multi_modal_data": {"image": img}}  # vLLM consumes the dict
        async for final in engine.generate(prompt, params, uuid.uuid4().hex):
            pass
        return len(final.outputs[0].token_ids)

    try:
        return await measure(call, rounds, seconds)
    finally:
        engine.shutdown()


def vllm_server(model_dir: Path, rounds: int, seconds: float, workdir: Path, engine_env: dict[str, str]) -> dict:
    port = free_port()
    cmd = [
        sys.executable, "-m", "paliserve.vllm_cli", "serve", str(model_dir),
        "--served-model-name", "tiny-paligemma", "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.3",
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    log = open(workdir / "vllm-server.log", "wb")
    proc = start_service(cmd, log, env={**os.environ, **engine_env})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited; see {workdir / 'vllm-server.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return asyncio.run(measure_http(url, "tiny-paligemma", rounds, seconds, roots=(proc.pid,)))
    finally:
        stop_process_tree(proc.pid)
        log.close()


def paliserve_stack(model_dir: Path, rounds: int, seconds: float, workdir: Path, colocate: bool,
                    haproxy: bool = True, tenant: bool = False, quotas: bool = False) -> dict:
    import hashlib

    import yaml

    from paliserve.spec import TenantLimits, TenantPlan

    plan_file = workdir / "plan.yaml"
    plan = tiny_plan(model_dir, max_num_seqs=MAX_NUM_SEQS, max_model_len=MAX_MODEL_LEN)
    plan.gateway.colocate = colocate
    if tenant or quotas:
        limits = TenantLimits(**NEVER_REFUSING) if quotas else TenantLimits()
        digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
        plan.tenants = [TenantPlan(name="bench", api_key_sha256=[digest], models=["tiny-paligemma"], limits=limits)]
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    port = free_port()
    env = {**os.environ, "PALISERVE_CACHE": str(workdir / "cache"), "RAY_SERVE_ENABLE_HA_PROXY": "1" if haproxy else "0"}
    paliserve = str(Path(sys.executable).with_name("paliserve"))
    started = subprocess.run([paliserve, "up", "--detach", "--plan", str(plan_file), "--port", str(port)], env=env,
                             capture_output=True, text=True, timeout=400)  # fmt: skip
    if started.returncode != 0:
        raise RuntimeError(f"paliserve up failed:\n{started.stdout}\n{started.stderr}")
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}")
        key = BENCH_KEY if tenant or quotas else None
        state = json.loads((workdir / "cache" / "cluster.json").read_text())
        # Ray's processes, and the writer of Prometheus's target list that `up` starts beside them
        roots = tuple(pid for pid in (state["pid"], state.get("metrics_targets_pid")) if pid)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return asyncio.run(measure_http(url, "tiny-paligemma", rounds, seconds, key, roots=roots))
    finally:
        subprocess.run([paliserve, "down"], env=env, capture_output=True, timeout=120)


SETUPS = ["inprocess", "vllm", "vllm-engine", "paliserve", "tenant", "quotas", "separate", "pyproxy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--only", choices=SETUPS, action="append")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--starts", type=int, default=1, help="start every setup this many times, taking turns")
    opts = parser.parse_args()
    only = set(opts.only or SETUPS)
    runs: dict[str, list[dict]] = {}
    speeds: dict[str, list[float]] = {}
    failed = {}
    same_engine = cpu_engine_env(os.environ)  # what the shell already sets, vLLM's server inherits
    setups = {
        "inprocess": ("engine in-process (no HTTP)", "in this process"),
        "vllm": (VLLM, f"`vllm serve` (api_server), {STARTED}"),
        "vllm-engine": (VLLM_ENGINE, f"`vllm serve` (api_server) with {_settings(same_engine)}, {STARTED}"),
        "paliserve": (OURS, f"`paliserve up --detach`, Ray {STARTED}"),
        "tenant": (TENANT, f"`paliserve up --detach`, Ray {STARTED}"),
        "quotas": (QUOTAS, f"`paliserve up --detach`, Ray and the quota store {STARTED}"),
        "separate": (SEPARATE, f"`paliserve up --detach`, Ray {STARTED}"),
        "pyproxy": (PYTHON_PROXY, f"`paliserve up --detach` with RAY_SERVE_ENABLE_HA_PROXY=0, Ray {STARTED}"),
    }
    with tempfile.TemporaryDirectory(prefix="paliserve-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = build_tiny_model(workdir / "tiny-paligemma")
        for turn in range(1, opts.starts + 1):
            for key in SETUPS:
                name, how = setups[key]
                if key not in only or name in failed:
                    continue
                speed = machine_speed()
                speeds.setdefault(name, []).append(speed)
                print(f"== start {turn}/{opts.starts}, {name}: {how}; machine-speed control {speed:.3f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
                try:
                    if key == "inprocess":
                        result = asyncio.run(in_process(model_dir, opts.rounds, opts.seconds))
                    elif key in ("vllm", "vllm-engine"):
                        engine_env = same_engine if key == "vllm-engine" else {}
                        result = vllm_server(model_dir, opts.rounds, opts.seconds, workdir, engine_env)
                    else:
                        result = paliserve_stack(
                            model_dir, opts.rounds, opts.seconds, workdir, colocate=key != "separate",
                            haproxy=key != "pyproxy", tenant=key == "tenant", quotas=key == "quotas",
                        )  # fmt: skip
                except RuntimeError as exc:  # a setup that fails to start is reported; the others still count
                    failed[name] = str(exc).splitlines()[0][:200]
                    print(f"== {name} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                runs.setdefault(name, []).append(result)
                print(f"   {result['req_per_s']:.1f} req/s, p50 {result['p50_ms']:.1f} ms", file=sys.stderr, flush=True)
    results = {name: combined(each) for name, each in runs.items()}
    print("\nEvery server " + STARTED + "; one client (httpx, this process) for all.")
    print("machine-speed control: seconds a fixed pure-Python loop took (median of 5) just before each start")
    if opts.starts > 1:
        print(f"each setup started {opts.starts} times, taking turns; figures are medians over the starts")
    print(f"\n{'setup':46} {'p50 ms c=1':>11} {'p95 ms c=1':>11} {'req/s c=16':>11} {'tok/s c=16':>11} {'control s':>10}")
    for name, r in results.items():
        control = "/".join(f"{v:.3f}" for v in speeds[name])
        print(f"{name:46} {r['p50_ms']:11.1f} {r['p95_ms']:11.1f} {r['req_per_s']:11.1f} {r['tok_per_s']:11.0f} "
              f"{control:>10}")  # fmt: skip
        if opts.starts > 1:
            print(f"{'  each start':46} {_each(runs[name], 'p50_ms'):>11} {'':11} {_each(runs[name], 'req_per_s'):>11}")
    print("\nCPU milliseconds per request at concurrency 16, by part of the serving path (mean over the starts):")
    for name, r in results.items():
        parts = sorted(r["cpu_ms_per_request"].items(), key=lambda kv: -kv[1])
        total = sum(v for _, v in parts)
        print(f"{name:46} total {total:6.1f}: " + ", ".join(f"{p} {v:.1f}" for p, v in parts if v >= 0.05))
    for name, why in failed.items():
        print(f"{name:46} FAILED to start or serve: {why}")
    print(f"\nCPU used with no request (cores, over {IDLE_S} s, after waiting for the stack to settle; mean over the starts):")
    for name, r in results.items():
        parts = sorted(r["idle_cores"].items(), key=lambda kv: -kv[1])
        print(f"{name:46} settled in {r['settled_s']:5.1f} s; total {sum(v for _, v in parts):5.3f}: "
              + ", ".join(f"{p} {v:.3f}" for p, v in parts if v >= 0.002))  # fmt: skip
    for peer, peer_name in ((VLLM, "vLLM server"), (VLLM_ENGINE, "vLLM server with the same engine settings")):
        base = runs.get(peer)
        for name in (OURS, TENANT, QUOTAS, SEPARATE, PYTHON_PROXY):
            ours = runs.get(name)
            if base and ours:
                b, o = results[peer], results[name]
                line = (f"{name} / {peer_name}: throughput {o['req_per_s'] / b['req_per_s']:.2f}x (target >= 1.00x), "
                        f"p50 {o['p50_ms'] - b['p50_ms']:+.1f} ms (target <= +5 ms)")  # fmt: skip
                if len(ours) > 1 or len(base) > 1:
                    pairs = list(zip(base, ours))
                    line += ("; per start " + ", ".join(f"{x['req_per_s'] / v['req_per_s']:.2f}x" for v, x in pairs)
                             + " and " + ", ".join(f"{x['p50_ms'] - v['p50_ms']:+.1f} ms" for v, x in pairs))  # fmt: skip
                print(line)
    if opts.json:
        opts.json.write_text(json.dumps({"results": results, "starts": runs, "machine_speed_s": speeds}, indent=2))


def _settings(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items())


def combined(each: list[dict]) -> dict:
    """One setup's starts as one: medians of the latencies and rates, means of the CPU shares."""

    def median(key: str) -> float:
        return statistics.median(r[key] for r in each)

    def mean_parts(key: str) -> dict[str, float]:
        parts = {p for r in each for p in r[key]}
        return {p: sum(r[key].get(p, 0.0) for r in each) / len(each) for p in parts}

    return {
        "p50_ms": median("p50_ms"), "p95_ms": median("p95_ms"), "req_per_s": median("req_per_s"),
        "tok_per_s": median("tok_per_s"), "cpu_ms_per_request": mean_parts("cpu_ms_per_request"),
        "idle_cores": mean_parts("idle_cores"), "settled_s": max(r["settled_s"] for r in each),
    }  # fmt: skip


def _each(each: list[dict], key: str) -> str:
    return "/".join(f"{r[key]:.0f}" if key == "req_per_s" else f"{r[key]:.1f}" for r in each)


if __name__ == "__main__":
    main()
