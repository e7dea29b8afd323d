"""benchmarks/gpu_kernels.py: its prediction is the planner's at kernel level, and its measuring
half (torch only, for a GPU machine) runs through, here on the CPU with a small architecture."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_kernels.py"


def run(*args) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          check=True, timeout=300).stdout  # fmt: skip


def test_prediction_is_the_planners_without_the_step_overhead_and_measure_runs(tmp_path):
    spec_file = tmp_path / "spec.json"
    run("predict", "paligemma-3b-pt-224", "--gpu", "H200", "--out", spec_file)
    spec = json.loads(spec_file.read_text())
    assert spec["prompt_tokens"] == 256 + 2 + 10 and spec["gpu"] == "H200"
    reads = spec["work"]["decode_read_bytes"]
    bandwidth = spec["datasheet"]["bandwidth_bytes_s"] * spec["datasheet"]["memory_efficiency"]
    assert spec["predicted"]["decode_step_s_batch1"] == pytest.approx(reads / bandwidth, rel=0.02)  # + the KV read

    small = dict(spec)
    small["arch"] = {**spec["arch"], "image_tokens": 16,
                     "text": {**spec["arch"]["text"], "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
                              "num_heads": 4, "num_kv_heads": 1, "head_dim": 16, "vocab_size": 1000},
                     "vision": {**spec["arch"]["vision"], "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                "num_heads": 4}}  # fmt: skip
    small["prompt_tokens"] = 28
    small_file, measured_file = tmp_path / "small.json", tmp_path / "measured.json"
    small_file.write_text(json.dumps(small))
    measured_file.write_text(run("measure", small_file, "--device", "cpu"))
    measured = json.loads(measured_file.read_text())
    assert all(measured[k] > 0 for k in ("vision_s", "prefill_s", "decode_step_s_batch1", "decode_step_s_batch4"))
    table = run("compare", small_file, measured_file)
    assert "decode_step_s_batch4" in table and "implied efficiency" in table
