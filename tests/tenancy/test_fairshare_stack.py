"""Fair shares and quotas across two gateway replicas, through a stack of its own.

`paliserve up` serves a plan with a separate gateway of two replicas in front of one engine
replica. Each gateway replica is called on its own HTTP port (HAProxy's servers for it, read from
the config Ray writes), so the test decides where each tenant's traffic lands, as an uneven load
balancer would: tenant `skewed` sends only to replica 0, `spread` to both. Alone, replica 0 would
split its slots 1:1 and replica 1 give all of its to `spread` (`skewed` gets 1/4 of the engine);
sharing what each served through the quota store, replica 0 counts what `spread` got on replica 1
and gives `skewed` its slots: 1/2, the weights' share as far as this skew allows
(tests/tenancy/test_fairness.py simulates both). A tenant with a requests-per-minute limit sending
through both replicas is refused at its limit, counted once for the cluster.
"""

from __future__ import annotations

import hashlib
import os
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import PALISERVE
from stack_support import chat_body, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]

KEYS = {"skewed": "sk-fair-skewed", "spread": "sk-fair-spread", "capped": "sk-fair-capped"}
RPM_LIMIT = 30
FLOOD_S = 15
WARMUP_S = 3


def fairshare_plan(model_dir: Path):
    from paliserve.local import TINY_MODEL_NAME, tiny_plan
    from paliserve.spec import TenantLimits, TenantPlan

    plan = tiny_plan(model_dir, max_num_seqs=4, max_model_len=512)
    plan.gateway.colocate = False
    plan.gateway.replicas = 2
    plan.deployments[0].predicted.max_concurrency = 2  # one engine slot per gateway replica
    plan.tenants = [
        TenantPlan(name=name, api_key_sha256=[hashlib.sha256(key.encode()).hexdigest()], models=[TINY_MODEL_NAME],
                   limits=TenantLimits(requests_per_min=RPM_LIMIT) if name == "capped" else TenantLimits())
        for name, key in KEYS.items()
    ]  # fmt: skip
    return plan


@pytest.fixture(scope="module")
def fair_stack(tmp_path_factory, tiny_model_dir):
    from serve.cluster import free_port

    workdir = tmp_path_factory.mktemp("fairshare")
    env = {**os.environ, "PALISERVE_CACHE": str(workdir / "cache")}
    plan = fairshare_plan(tiny_model_dir)
    assert plan.needs_quota_store()  # no tenant limit is needed for the store: two gateways share shares
    plan_file = workdir / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    port = free_port()
    started = subprocess.run([PALISERVE, "up", "--detach", "--plan", str(plan_file), "--port", str(port)],
                             env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    try:
        assert started.returncode == 0, f"paliserve up failed:\n{started.stdout}\n{started.stderr}"
        state = json.loads((workdir / "cache" / "cluster.json").read_text())
        yield {"url": f"http://127.0.0.1:{port}", "state": state, "replicas": gateway_replica_urls(state)}
    finally:
        subprocess.run([PALISERVE, "down"], env=env, capture_output=True, timeout=180)


def gateway_replica_urls(state: dict) -> list[str]:
    """The gateway replicas' own HTTP ports, from the HAProxy config Ray writes for them."""
    def servers():
        for config in Path(state["temp_dir"], "h").glob("*/haproxy.cfg"):  # one directory per node
            found = re.findall(r"^\s*server SERVE_REPLICA_\S+ ([\d.]+:\d+) check", config.read_text(), re.M)
            if len(found) == 2:
                return found
        return None

    found = wait_for(servers, timeout_s=60, what="two gateway replicas in HAProxy's config")
    return [f"http://{address}" for address in found]


def chat(url: str, tenant: str, client: httpx.Client) -> httpx.Response:
    return client.post(f"{url}/v1/chat/completions", json=chat_body("tiny-paligemma", 8, False),
                       headers={"Authorization": f"Bearer {KEYS[tenant]}"})  # fmt: skip


def test_a_tenant_on_one_replica_gets_its_share_of_the_cluster(fair_stack):
    replica0, replica1 = fair_stack["replicas"]
    served = {"skewed": 0, "spread": 0}
    errors: list[str] = []
    start = time.monotonic()
    deadline = start + WARMUP_S + FLOOD_S
    lock = threading.Lock()

    def worker(tenant: str, url: str) -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                reply = chat(url, tenant, client)
                if reply.status_code != 200:
                    errors.append(f"{tenant}: {reply.status_code} {reply.text[:200]}")
                    time.sleep(0.2)
                elif time.monotonic() > start + WARMUP_S:  # shares counted once both queues are long
                    with lock:
                        served[tenant] += 1

    # four callers per tenant and replica: both replicas' queues stay backlogged
    routes = [("skewed", replica0)] * 4 + [("spread", replica0)] * 4 + [("spread", replica1)] * 4
    threads = [threading.Thread(target=worker, args=route) for route in routes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=FLOOD_S + WARMUP_S + 120)
    share = served["skewed"] / max(1, sum(served.values()))
    print(f"\nserved over {FLOOD_S} s: {served}; skewed's share {share:.2f} (1/4 unshared, 1/2 shared)")
    assert not errors, errors[:5]
    assert sum(served.values()) >= 40, served
    assert 0.40 <= share <= 0.60, served


def test_a_limit_holds_for_the_cluster_across_both_replicas(fair_stack):
    statuses = []
    with httpx.Client(timeout=60) as client:
        for i in range(RPM_LIMIT + 6):
            statuses.append(chat(fair_stack["replicas"][i % 2], "capped", client).status_code)
    print(f"\nrequests_per_min={RPM_LIMIT} through two replicas: {statuses}")
    assert statuses[:RPM_LIMIT] == [200] * RPM_LIMIT
    assert set(statuses[RPM_LIMIT:]) == {429}
