"""A broken checkpoint makes `paliserve up` fail fast, name the path and the cause, and leave no
process behind: missing or corrupt files before anything starts (serve/preflight.py), weights
only the engine can refuse through Serve's DEPLOY_FAILED status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import psutil
import pytest
import yaml
from conftest import PALISERVE

from paliserve.local import tiny_plan
from serve.cluster import last_exception_line
from serve.preflight import CheckpointError, check_checkpoint

ENGINE_FAILURE_BOUND_S = 180


def _copy(good, tmp_path, name="ckpt"):
    return shutil.copytree(good, tmp_path / name)


def _truncate(path, keep: int):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize(
    "breakage, cause",
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("no config", "has no config.json"),
        ("garbage config", "config.json is not valid JSON"),
        ("config list", "no model_type"),
        ("no weights", "no weight files"),
        ("truncated weights", "model.safetensors is truncated or corrupt"),
        ("garbage weights", "model.safetensors is not a valid safetensors file"),
        ("missing shard", "names missing shards: model-00002.safetensors"),
    ],
)
def test_preflight_names_the_checkpoint_and_the_cause(tiny_model_dir, tmp_path, breakage, cause):
    path = tmp_path / "ckpt"
    if breakage == "file":
        path.write_text("not a directory")
    elif breakage != "missing":
        _copy(tiny_model_dir, tmp_path)
        weights = path / "model.safetensors"
        if breakage == "no config":
            (path / "config.json").unlink()
        elif breakage == "garbage config":
            (path / "config.json").write_text('{"model_type": "paligemma",')
        elif breakage == "config list":
            (path / "config.json").write_text("[]")
        elif breakage == "no weights":
            weights.unlink()
        elif breakage == "truncated weights":
            _truncate(weights, weights.stat().st_size // 2)
        elif breakage == "garbage weights":
            weights.write_bytes(os.urandom(4096))
        elif breakage == "missing shard":
            index = {"weight_map": {"a": "model.safetensors", "b": "model-00002.safetensors"}}
            (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(str(path))
    assert raised.value.path == str(path) and cause in str(raised.value), str(raised.value)


def test_preflight_passes_a_good_checkpoint_and_leaves_hub_ids_to_the_engine(tiny_model_dir):
    check_checkpoint(str(tiny_model_dir))
    check_checkpoint("google/paligemma-3b-mix-224")


def test_last_exception_line_reads_a_bare_assertion_with_its_source():
    text = "Traceback (most recent call last):\n  File \"x.py\", line 1\n    assert a == b\n    ^^^^^^\nAssertionError\n"
    assert last_exception_line(text) == "AssertionError: assert a == b"
    assert last_exception_line("x\nRuntimeError: boom\n") == "RuntimeError: boom"


def _up(plan_file, tmp_path, timeout_s: float) -> tuple[subprocess.CompletedProcess, float, list[psutil.Process]]:
    """Run `paliserve up --plan`, recording every process it starts while it runs."""
    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}
    from serve.cluster import free_port

    started = time.monotonic()
    proc = subprocess.Popen(
        [PALISERVE, "up", "--detach", "--plan", str(plan_file), "--port", str(free_port())],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    done = threading.Event()

    def watch() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                for child in root.children(recursive=True):
                    seen.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    watcher.join(timeout=5)
    elapsed = time.monotonic() - started
    _, alive = psutil.wait_procs(list(seen.values()), timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), elapsed, alive


def _write_plan(tmp_path, model_dir):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(tiny_plan(model_dir).model_dump(mode="json")))
    return plan_file


def test_up_refuses_a_missing_checkpoint_before_starting_anything(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    result, elapsed, alive = _up(_write_plan(tmp_path, missing), tmp_path, timeout_s=60)
    print(f"\nmissing checkpoint: exit {result.returncode} after {elapsed:.1f} s: {result.stderr.strip()}")
    assert result.returncode == 2, result.stderr
    assert f"checkpoint {missing}: does not exist" in result.stderr
    assert not alive and "starting Ray" not in result.stderr
    assert not (tmp_path / "cache" / "cluster.json").exists()


def test_up_refuses_a_corrupt_default_model(tmp_path):
    """The embedded default reuses the tiny model in the cache; a damaged one is named."""
    from paliserve.tiny_model import ensure_tiny_model

    cache = tmp_path / "cache"
    model = ensure_tiny_model(cache / "models" / "tiny-paligemma")
    (model / "config.json").write_text("{not json")
    env = {**os.environ, "PALISERVE_CACHE": str(cache)}
    result = subprocess.run([PALISERVE, "up", "--detach", "--port", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"checkpoint {model}: config.json is not valid JSON" in result.stderr


@pytest.mark.engine
@pytest.mark.own_cluster
def test_up_reports_weights_the_engine_refuses_and_stops_everything(tmp_path, tiny_model_dir):
    """Well-formed safetensors holding a tensor of the wrong shape: only the engine finds it."""
    import torch
    from safetensors.torch import save_file

    broken = _copy(tiny_model_dir, tmp_path)
    save_file({"language_model.model.embed_tokens.weight": torch.zeros(3, 3)}, str(broken / "model.safetensors"))
    check_checkpoint(str(broken))
    result, elapsed, alive = _up(_write_plan(tmp_path, broken), tmp_path, timeout_s=ENGINE_FAILURE_BOUND_S)
    reason = next((line for line in result.stderr.splitlines() if "paliserve failed to start" in line), "")
    print(f"\nbroken weights: exit {result.returncode} after {elapsed:.1f} s: {reason}")
    assert result.returncode == 1, result.stderr
    assert f"the engine for tiny-paligemma (checkpoint {broken}) failed to start: " in reason
    cause = reason.split("failed to start: ", 2)[-1]
    assert "Error" in cause and "Engine core initialization failed" not in cause, reason
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"
    assert not (tmp_path / "cache" / "cluster.json").exists()
    assert any((tmp_path / "cache" / "last-failed-start").glob("worker-*.out"))
