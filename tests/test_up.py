"""`paliserve up` in the foreground on the embedded default, Ctrl-C, and `down` bookkeeping."""

import json
import os
import signal
import subprocess
import time

import httpx
import psutil
import pytest
from conftest import PALISERVE

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]


def test_up_serves_the_embedded_default_until_ctrl_c(tmp_path):
    from serve.cluster import free_port

    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}
    port = free_port()
    proc = subprocess.Popen(
        [PALISERVE, "up", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    started_by_up: list[psutil.Process] = []
    try:
        output = []
        deadline = time.monotonic() + 400
        for line in proc.stdout:
            output.append(line)
            if "press Ctrl-C to stop" in line or time.monotonic() > deadline:
                break
        text = "".join(output)
        assert f"http://127.0.0.1:{port}" in text, text
        assert "curl -s" in text
        # the tiny model was made on first use in the cache directory
        assert (tmp_path / "cache" / "models" / "tiny-paligemma" / "model.safetensors").exists()

        curl = next(line for line in output if line.startswith("curl -s"))
        body = json.loads(curl.split(" -d '", 1)[1].rsplit("'", 1)[0])
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text

        state = json.loads((tmp_path / "cache" / "cluster.json").read_text())
        ray_head = psutil.Process(state["pid"])
        started_by_up = [ray_head, *ray_head.children(recursive=True)]
        # the CPU engine runs its model in vLLM's engine core process, on vLLM's thread count (paliserve/cpu_engine.py)
        names = [p.name() for p in started_by_up if p.is_running()]
        assert names.count("VLLM::EngineCore") == 1 and "VLLM::Worker" not in names, names
        (core,) = [p for p in started_by_up if p.name() == "VLLM::EngineCore"]
        engine_env = core.environ()
        from autoscale.host_probe import engine_threads

        threads = str(engine_threads())
        assert (engine_env.get("VLLM_ENABLE_V1_MULTIPROCESSING"), engine_env.get("OMP_NUM_THREADS")) == ("0", threads)

        second = subprocess.run([PALISERVE, "up", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "already running" in second.stderr

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(started_by_up, timeout=10)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    assert not (tmp_path / "cache" / "cluster.json").exists()


def test_a_stop_during_start_up_leaves_nothing_running(tmp_path):
    """SIGTERM while the engine starts: `up` stops the Ray cluster it started and exits 1."""
    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}
    from serve.cluster import free_port

    proc = subprocess.Popen([PALISERVE, "up", "--port", str(free_port()), "--no-prometheus"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("raylet" in " ".join(p.cmdline()) for p in started):
            time.sleep(0.5)
            started = psutil.Process(proc.pid).children(recursive=True)
        assert started, "up started no Ray process within 120 s"
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "interrupted" in output, output
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


def test_down_when_nothing_runs(tmp_path):
    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path)}
    result = subprocess.run([PALISERVE, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "not running" in result.stderr
