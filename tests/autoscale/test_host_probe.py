"""The host speed probe (autoscale/host_probe.py): it measures, runs standalone, and its per-machine
cache is keyed, reused, and re-measured when corrupt or measured under load."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoscale.host_probe import (
    HostSpeed,
    cached_speed,
    cpu_info,
    cpu_supports_bf16,
    current_key,
    engine_threads,
)

ROOT = Path(__file__).resolve().parents[2]
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9454 48-Core Processor
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9454 48-Core Processor
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni
"""


@pytest.fixture(scope="module")
def standalone():
    """One real probe, run as `python -I autoscale/host_probe.py` from elsewhere: isolated mode
    puts neither the script's directory nor the repository on the path, so only torch and the
    standard library are importable."""
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, "-I", str(ROOT / "autoscale" / "host_probe.py"), "--device", "cpu", "--threads", "1"],
                            cwd="/", capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_standalone_probe_prints_sane_positive_figures(standalone):
    speed = HostSpeed.from_json(standalone)
    assert standalone["source"] == "probe" and speed.device == "cpu" and speed.threads == 1
    assert 1e8 < speed.bandwidth_bytes_s < 1e13  # 0.1 GB/s .. 10 TB/s
    assert 1e8 < speed.flops["float32"] < 1e15
    name, flags = cpu_info()
    assert speed.name == name and speed.supports_bf16 == cpu_supports_bf16(flags)
    assert speed.key == current_key("cpu", 1) and 0 < speed.cpu_share <= 1
    assert speed.seconds < 60


def test_the_bandwidth_is_what_decode_shaped_products_stream(standalone):
    """Version 2: the bandwidth is the slower batch of x[b, 2048] @ W[2048, 16384] in the engine's
    dtype over 512 MiB of weights; the float32 sum of version 1 is kept beside it."""
    speed = HostSpeed.from_json(standalone)
    assert speed.probe_version == 2 and set(speed.decode_bytes_s) == {"1", "4"}
    assert speed.bandwidth_bytes_s == min(speed.decode_bytes_s.values()) and speed.read_bytes_s > 0
    dtype = "bfloat16" if speed.supports_bf16 else "float32"
    assert speed.decode_kernel in (f"onednn prepacked {dtype}", f"torch linear {dtype}")
    assert speed.shapes["decode_in_out"] == [2048, 16384] and speed.shapes["decode_bytes"] == [512 * 2**20]
    assert "decode-shaped" in speed.describe() and "float32 sum" in speed.describe()


def test_a_version_1_cache_file_is_measured_again(standalone, tmp_path):
    old = dataclasses.asdict(dataclasses.replace(HostSpeed.from_json(standalone), cpu_share=1.0, key=current_key("cpu", 1)))
    for field in ("read_bytes_s", "decode_bytes_s", "decode_kernel"):
        del old[field]
    (tmp_path / f"{current_key('cpu', 1)}.json").write_text(json.dumps(old | {"probe_version": 1}))
    assert HostSpeed.from_json(old | {"probe_version": 1}).decode_bytes_s == {}  # still parses
    measure_now, calls = _counting(dataclasses.replace(HostSpeed.from_json(standalone), cpu_share=1.0))
    speed, where = cached_speed(tmp_path, "cpu", 1, measure_now)
    assert calls == [("cpu", 1)] and where.startswith("probe, cached in") and speed.probe_version == 2


def _counting(speed: HostSpeed):
    calls = []

    def measure_now(device, threads):
        calls.append((device, threads))
        return dataclasses.replace(speed, threads=threads, key=current_key(device, threads))

    return measure_now, calls


def test_the_cache_is_keyed_per_machine_and_reused(standalone, tmp_path):
    quiet = dataclasses.replace(HostSpeed.from_json(standalone), cpu_share=1.0)
    measure_now, calls = _counting(quiet)
    first, where = cached_speed(tmp_path, "cpu", 1, measure_now)
    path = tmp_path / f"{current_key('cpu', 1)}.json"
    assert where == f"probe, cached in {path}" and path.is_file() and calls == [("cpu", 1)]
    again, where = cached_speed(tmp_path, "cpu", 1, measure_now)
    assert where == f"cache {path}" and again == first and len(calls) == 1
    other, _ = cached_speed(tmp_path, "cpu", 2, measure_now)  # another thread count: another key
    assert other.threads == 2 and len(calls) == 2 and len(list(tmp_path.glob("*.json"))) == 2


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    json.dumps({"device": "cpu"}),
    "bandwidth",  # replaced below by a probe with a negative bandwidth
    "foreign",  # replaced below by a valid probe of another machine's key
])  # fmt: skip
def test_a_corrupt_or_foreign_cache_is_measured_again_and_replaced(standalone, tmp_path, content):
    quiet = dataclasses.replace(HostSpeed.from_json(standalone), cpu_share=1.0)
    path = tmp_path / f"{current_key('cpu', 1)}.json"
    stored = dataclasses.asdict(dataclasses.replace(quiet, key=current_key("cpu", 1)))
    if content == "bandwidth":
        content = json.dumps(stored | {"bandwidth_bytes_s": -1.0})
    elif content == "foreign":
        content = json.dumps(stored | {"key": "0123456789abcdef"})
    path.write_text(content)
    measure_now, calls = _counting(quiet)
    speed, where = cached_speed(tmp_path, "cpu", 1, measure_now)
    assert calls == [("cpu", 1)] and where.startswith("probe, cached in")
    assert HostSpeed.from_json(json.loads(path.read_text())) == speed
    assert not list(tmp_path.glob("*.tmp"))


def test_a_probe_under_load_is_used_but_not_cached(standalone, tmp_path):
    busy = dataclasses.replace(HostSpeed.from_json(standalone), cpu_share=0.4)
    measure_now, calls = _counting(busy)
    speed, where = cached_speed(tmp_path, "cpu", 1, measure_now)
    assert where == "probe under load, not cached" and not list(tmp_path.iterdir())
    assert speed.contended and "under load: its threads got 40% of the cores" in speed.describe()
    cached_speed(tmp_path, "cpu", 1, measure_now)
    assert len(calls) == 2


def test_from_json_refuses_what_is_not_a_probe(standalone):
    for bad in ({}, standalone | {"flops": {}}, standalone | {"threads": 0}, standalone | {"flops": {"float32": 0}},
                standalone | {"bandwidth_bytes_s": "fast"}):  # fmt: skip
        with pytest.raises(ValueError, match="not a host probe result"):
            HostSpeed.from_json(bad)


def test_cpu_info_reads_the_model_and_flags():
    name, flags = cpu_info(CPUINFO)
    assert name == "AMD EPYC 9454 48-Core Processor" and "avx512_bf16" in flags and flags == sorted(set(flags))
    assert cpu_supports_bf16(flags) and not cpu_supports_bf16(["avx2", "fma"])
    assert cpu_supports_bf16(cpu_info("Features\t: fp asimd bf16 sve\n")[1])  # aarch64


def _sys_tree(root: Path, nodes: dict[int, list[int]], threads_per_core: int) -> Path:
    """A /sys/devices/system with `nodes` (node -> logical CPU ids); consecutive ids share a core."""
    for node, cpus in nodes.items():
        (root / "node" / f"node{node}").mkdir(parents=True)
        (root / "node" / f"node{node}" / "cpulist").write_text(",".join(map(str, cpus)) + "\n")
        for cpu in cpus:
            topology = root / "cpu" / f"cpu{cpu}" / "topology"
            topology.mkdir(parents=True)
            (topology / "core_id").write_text(f"{cpu // threads_per_core}\n")
            (topology / "physical_package_id").write_text(f"{node}\n")
    return root


def test_engine_threads_follow_vllms_cpu_binding(tmp_path):
    two_nodes = _sys_tree(tmp_path / "numa", {0: list(range(8)), 1: list(range(8, 16))}, threads_per_core=2)
    everything = set(range(16))
    # auto: one logical CPU per physical core of the first NUMA node (4), less one for the scheduler
    assert engine_threads({}, two_nodes, everything) == 3
    assert engine_threads({}, two_nodes, set(range(8, 16))) == 3  # the first node the process may use
    assert engine_threads({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, two_nodes, everything) == 4
    assert engine_threads({"VLLM_CPU_OMP_THREADS_BIND": "0-5|8-13"}, two_nodes, everything) == 6
    assert engine_threads({"VLLM_CPU_OMP_THREADS_BIND": "nobind"}, two_nodes, everything) == 16
    small = _sys_tree(tmp_path / "small", {0: [0, 1]}, threads_per_core=1)
    assert engine_threads({}, small, {0, 1}) == 1  # this development box: 2 cores, one kept for the scheduler
    assert engine_threads({}, small, {0}) == 1  # nothing left to reserve
    no_numa = tmp_path / "no-numa"
    (no_numa / "cpu").mkdir(parents=True)
    assert engine_threads({}, no_numa, {0, 1, 2, 3}) == 3  # no topology files: each CPU its own core


def test_engine_threads_here_fit_the_cpus_this_process_may_use():
    assert 1 <= engine_threads() <= len(os.sched_getaffinity(0))
