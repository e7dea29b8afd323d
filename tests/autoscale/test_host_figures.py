"""The planner with the host probe's figures for a `cpu` pool, and `paliserve plan` measuring (or
reading the cached figures of) this machine."""

import dataclasses
import json

import typer
from typer.testing import CliRunner

from autoscale.catalog import GPU_CATALOG, HostFigures, accelerator_of
from autoscale.cli import register
from autoscale.planner import plan
from paliserve.spec import GpuSpec
from planspecs import one_tenant

# Figures of the order this development box measured (1 thread: ~25 GB/s read, 0.2 TFLOP/s bf16)
HOST = HostFigures(25e9, (("bfloat16", 0.2e12), ("float32", 0.07e12)), "cache /tmp/x.json: AMD EPYC, 1 thread")
FP32_ONLY = HostFigures(25e9, (("float32", 0.07e12),), "probe, cached in /tmp/y.json: a CPU without bf16")
LOOSE = dict(ttft=600_000.0, tpot=60_000.0)  # no SLO binds: the batch is the concurrency


def _cpu_spec(**gpu_fields):
    return one_tenant("paligemma-3b-pt-224", gpu="cpu", count=1, per_node=1, concurrency=1, prompt=10, output=200,
                      **LOOSE, **gpu_fields)  # fmt: skip


def test_probe_figures_replace_the_catalogs_for_a_cpu_pool():
    d = plan(_cpu_spec(), host=HOST).deployments[0]
    assert d.engine_args.dtype == "bfloat16" and "host probe" in d.reasons["engine_args.dtype"]
    assert d.calibration.startswith("host probe efficiencies:")
    assert "25 GB/s and 0.2 TFLOP/s bfloat16, 0.07 TFLOP/s float32 from the host probe: cache /tmp/x.json" in d.calibration
    catalog = plan(_cpu_spec()).deployments[0]
    assert catalog.engine_args.dtype == "float32" and catalog.calibration.startswith("datasheet efficiencies:")


def test_the_prediction_follows_the_measured_figures():
    base = plan(_cpu_spec(), host=HOST).deployments[0].predicted
    wider = plan(_cpu_spec(), host=dataclasses.replace(HOST, bandwidth_bytes_s=50e9)).deployments[0].predicted
    faster = plan(_cpu_spec(), host=dataclasses.replace(HOST, flops_by_dtype=(("bfloat16", 0.4e12),))).deployments[0].predicted
    assert wider.tpot_ms < base.tpot_ms and wider.ttft_p95_ms <= base.ttft_p95_ms
    assert faster.ttft_p95_ms < 0.6 * base.ttft_p95_ms  # prefill is compute-bound: about half


def test_a_cpu_without_bf16_plans_float32_at_its_float32_rate():
    d = plan(_cpu_spec(), host=FP32_ONLY).deployments[0]
    assert d.engine_args.dtype == "float32"
    accel = accelerator_of(GpuSpec(type="cpu"), host=FP32_ONLY)
    assert accel.flops_for("float32") == 0.07e12 and not accel.supports_bf16


def test_figures_in_the_spec_win_over_the_probe():
    d = plan(_cpu_spec(bandwidth_tb_s=0.04, tflops=0.5), host=HOST).deployments[0]
    assert d.calibration.startswith("datasheet efficiencies:") and "from the spec" in d.calibration
    assert d.engine_args.dtype == "float32"
    assert accelerator_of(GpuSpec(type="cpu", memory_gb=64), host=HOST).memory_bytes == 64 * 10**9  # memory still from the spec


def test_gpu_pools_ignore_host_figures():
    spec = one_tenant("paligemma-3b-mix-224", gpu="L4")
    assert plan(spec, host=HOST) == plan(spec)
    assert accelerator_of(GpuSpec(type="L4"), host=HOST) == GPU_CATALOG["L4"]


# --- `paliserve plan` -----------------------------------------------------------------------------

app = typer.Typer()
register(app)
runner = CliRunner()
ONE_CPU = ["plan", "--model", "paligemma-3b-pt-224", "--gpu", "cpu", "--gpu-count", "1", "--concurrency", "1",
           "--prompt-tokens", "10", "--output-tokens", "200", "--ttft-ms", "600000", "--tpot-ms", "60000", "--json"]


def _cached_here(tmp_path, monkeypatch):
    """A valid cache file for this machine's key, so the command reads it instead of measuring."""
    from autoscale.host_probe import HostSpeed, current_key

    monkeypatch.setenv("PALISERVE_CACHE", str(tmp_path))
    key = current_key("cpu")
    speed = HostSpeed(device="cpu", name="this machine", threads=1, bandwidth_bytes_s=30e9,
                      flops={"bfloat16": 0.25e12, "float32": 0.08e12}, seconds=3.0,
                      measured_at="2026-11-30T02:00:00Z", torch_version="x", key=key)  # fmt: skip
    path = tmp_path / "host-probe" / f"{key}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dataclasses.asdict(speed)))
    return path


def test_plan_reads_this_machines_cached_figures_and_says_so(tmp_path, monkeypatch):
    path = _cached_here(tmp_path, monkeypatch)
    result = runner.invoke(app, ONE_CPU)
    assert result.exit_code == 0, result.output
    assert "cpu figures: this machine, 1 thread: 30 GB/s read, 0.25 TFLOP/s bfloat16, 0.08 TFLOP/s float32" in result.stderr
    assert f"(cache {path})" in result.stderr
    d = json.loads(result.stdout)["deployments"][0]
    assert d["engine_args"]["dtype"] == "bfloat16" and f"from the host probe: cache {path}" in d["calibration"]


def test_no_host_probe_keeps_the_catalog_figures(tmp_path, monkeypatch):
    _cached_here(tmp_path, monkeypatch)
    result = runner.invoke(app, ONE_CPU + ["--no-host-probe"])
    assert result.exit_code == 0, result.output
    assert "cpu figures" not in result.stderr
    d = json.loads(result.stdout)["deployments"][0]
    assert d["calibration"].startswith("datasheet efficiencies: 50% of bandwidth")


def _perf(host=HOST, concurrency=1, output=200):
    from autoscale.demand import demands
    from autoscale.sizing import size_deployment

    spec = one_tenant("paligemma-3b-pt-224", gpu="cpu", count=1, per_node=1, concurrency=concurrency, prompt=10,
                      output=output, **LOOSE)  # fmt: skip
    sizing = size_deployment(demands(spec)[0], accelerator_of(spec.gpus[0], host=host), spec.planner)
    return sizing.perf, sizing.load


def test_tpot_adds_the_other_requests_prefills_only():
    perf, load = _perf()
    step = lambda b: perf.step_s(b, load.context_mean)  # noqa: E731
    assert perf.tpot_s(1, load) == step(1)  # alone, a request's decode is never interrupted
    assert perf.tpot_s(4, load) == step(4) + 3 * perf.prefill_s(load.prompt_mean) / load.output_mean


def test_the_fit_against_what_was_measured_here():
    """The host-probe efficiencies against what benchmarks/real_size.py measured here (README,
    "Real size", runs D and E of 2026-11-30: PaliGemma 3B-224 bf16, 10 text tokens, 32 output
    tokens, concurrency 1: TTFT 6,796 and 6,683 ms, TPOT 361 and 346 ms) with the figures probe
    version 2 measured here on a quiet moment (2026-11-30 08:00, load average 2: 16.0 GB/s
    through decode-shaped bf16 products, 0.214 TFLOP/s bf16, 0.089 float32): within the issue's
    25%."""
    quiet = HostFigures(16.0e9, (("bfloat16", 0.214e12), ("float32", 0.089e12)), "README")
    perf, load = _perf(quiet, output=32)
    for ttft, tpot in ((6.796, 0.361), (6.683, 0.346)):
        assert abs(perf.tpot_s(1, load) / tpot - 1) < 0.25
        assert abs(perf.ttft_mean_s(1, load) / ttft - 1) < 0.25
