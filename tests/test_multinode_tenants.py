"""Tenants across nodes: a tenant's quota and `paliserve tenants apply` hold on the replicas of a
node that joined from another machine, as on the head's.

The same two nodes as tests/test_multinode.py (head at 127.0.0.2, `paliserve join` of a node at
127.0.0.3, one logical GPU each), here with the gateway inside each engine replica (the colocated
topology), so that each node holds an ingress replica by the plan's layout: the node's replica
has none of the head's environment, only what `join` read from the head's GCS (the quota store's
address and password, the published tenant set). Each node's HAProxy balances over both ingress
replicas (least connections: one after the other for sequential requests), and each node's Ray
exports the metrics of its own replicas, which say which node's replica answered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

import httpx
import psutil
import pytest
import yaml
from stack_support import chat_body, wait_for
from two_nodes import AUTH, HEAD_IP, MODEL, NODE_IP, two_node_cluster, two_node_plan
from two_nodes import paliserve as _paliserve
from two_nodes import process_tree as _tree

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]

LIMITED_KEY, LATE_KEY = "sk-limited-tenant", "sk-late-tenant"
REQUESTS_PER_MIN = 8


def _tenant(name: str, key: str, **fields):
    from paliserve.spec import TenantPlan

    return TenantPlan(name=name, api_key_sha256=[hashlib.sha256(key.encode()).hexdigest()], models=[MODEL], **fields)


def colocated_plan(model_dir):
    from paliserve.spec import TenantLimits

    plan = two_node_plan(model_dir)
    plan.gateway.colocate = True  # an ingress replica on each node's GPU, by the layout
    plan.tenants.append(_tenant("limited", LIMITED_KEY, limits=TenantLimits(requests_per_min=REQUESTS_PER_MIN)))
    return plan


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir):
    with two_node_cluster(tmp_path_factory.mktemp("multinode-tenants"), colocated_plan(tiny_model_dir)) as started:
        yield started


def _tenant_requests(ip: str, metrics_port: int, tenant: str) -> dict[str, float]:
    """status -> requests of `tenant` that the ingress replicas of one node answered (the
    gateway's counter, exported by that node's Ray)."""
    text = httpx.get(f"http://{ip}:{metrics_port}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_paliserve_requests_total{") and f'tenant="{tenant}"' in line:
            status = re.search(r'status="(\d+)"', line).group(1)
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_each_node_holds_an_ingress_replica_and_shares_the_heads_store(cluster):
    text = cluster["up_output"]
    assert f"node {HEAD_IP}: {MODEL} x1" in text and f"node {NODE_IP}: {MODEL} x1" in text, text
    assert re.search(rf"quota store \(redis-server, pid \d+\) at {re.escape(HEAD_IP)}:\d+", text), text
    assert "share the head's quota store and live tenants" in cluster["join_output"], cluster["join_output"]
    store = cluster["state"]["quota_store"]
    assert store["url"] == f"rediss://{HEAD_IP}:{store['port']}/0"  # across machines, over TLS only
    password_file = os.path.join(cluster["node"]["temp_dir"], "quota-store-password")
    assert open(password_file).read().strip() == open(os.path.join(store["data_dir"], "password")).read().strip()
    assert oct(os.stat(password_file).st_mode & 0o777) == "0o600"
    assert open(password_file).read().strip() not in cluster["up_output"] + cluster["join_output"]


def _until_the_nodes_ingress_uses_both_replicas(cluster):
    """`up` returns once both replicas run; each node's HAProxy learns of them from Serve's
    controller a little later (in CI, 9 requests in a row right after `up` all went to the head's
    replica). Requests of the unlimited tenant until the joined node's replica has answered one."""
    def answered_on_node():
        reply = httpx.post(f"{cluster['node_url']}/v1/chat/completions", json=chat_body(MODEL, 4), headers=AUTH, timeout=120)
        assert reply.status_code == 200, reply.text
        return _tenant_requests(NODE_IP, cluster["node"]["metrics_port"], "multinode").get("200")

    wait_for(answered_on_node, 90, 1, "a request through the node's ingress answered by the node's replica")


def test_a_tenants_quota_holds_on_the_joined_nodes_replica(cluster):
    """Through the joined node's ingress: the first 429 at the configured count, whichever of the
    two replicas answered; the node's own replica answered some of them (its metrics), which
    without the head's store would have been 503 `quota_unavailable`."""
    _until_the_nodes_ingress_uses_both_replicas(cluster)
    auth = {"Authorization": f"Bearer {LIMITED_KEY}"}
    statuses, retry_after = [], None
    for _ in range(REQUESTS_PER_MIN + 1):
        reply = httpx.post(f"{cluster['node_url']}/v1/chat/completions", json=chat_body(MODEL, 4), headers=auth, timeout=120)
        statuses.append(reply.status_code)
        retry_after = reply.headers.get("retry-after")
    assert statuses == [200] * REQUESTS_PER_MIN + [429], statuses
    assert retry_after and float(retry_after) > 0
    nodes = {HEAD_IP: cluster["state"]["metrics_port"], NODE_IP: cluster["node"]["metrics_port"]}

    def counted():  # Ray exports each node's series every few seconds
        counts = {ip: _tenant_requests(ip, port, "limited") for ip, port in nodes.items()}
        return counts if sum(sum(c.values()) for c in counts.values()) >= REQUESTS_PER_MIN + 1 else None

    counts = wait_for(counted, 60, 1, "the tenant's requests in the nodes' metrics")
    print(f"\nrequests of the limited tenant by node and status: {counts}")
    assert sum(c.get("200", 0) for c in counts.values()) == REQUESTS_PER_MIN
    assert sum(c.get("429", 0) for c in counts.values()) == 1
    assert sum(counts[NODE_IP].values()) >= 1, counts  # the joined node's replica enforced the quota
    assert not any(c.get("503") for c in counts.values()), counts


def test_a_tenant_applied_on_the_head_is_served_by_the_joined_nodes_replica(cluster):
    """`paliserve tenants apply` on the head returns once both ingress replicas, the joined node's
    among them (it reports through the GCS), serve the new set; the new key is accepted through
    the node's ingress, by both replicas."""
    late = cluster["plan"].model_copy(deep=True)
    late.tenants.append(_tenant("late", LATE_KEY))
    plan_file = cluster["work"] / "late.yaml"
    plan_file.write_text(yaml.safe_dump(late.model_dump(mode="json")))
    auth = {"Authorization": f"Bearer {LATE_KEY}"}
    assert httpx.post(f"{cluster['node_url']}/v1/chat/completions", json=chat_body(MODEL, 4), headers=auth,
                      timeout=60).status_code == 401  # fmt: skip
    started = time.monotonic()
    applied = _paliserve(["tenants", "apply", str(plan_file)], cluster["head_cache"])
    took = time.monotonic() - started
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "added late (1 key)" in applied.stdout and "every ingress replica (2) serves the new set" in applied.stdout, applied.stdout
    print(f"\n$ paliserve tenants apply late.yaml  ({took:.1f} s)\n{applied.stdout}")
    statuses = [httpx.post(f"{cluster['node_url']}/v1/chat/completions", json=chat_body(MODEL, 4), headers=auth,
                           timeout=120).status_code for _ in range(4)]  # fmt: skip
    assert statuses == [200] * 4, statuses
    listed = _paliserve(["tenants", "list", "--json"], cluster["head_cache"])
    assert listed.returncode == 0, listed.stderr
    served = json.loads(listed.stdout)
    assert served["replicas"] == 2 and len(served["versions"]) == 1 and "late" in {t["name"] for t in served["tenants"]}

    def late_on_node():
        counts = _tenant_requests(NODE_IP, cluster["node"]["metrics_port"], "late")
        return counts if counts.get("200") else None

    wait_for(late_on_node, 60, 1, "the late tenant's requests answered by the joined node's replica")


def test_down_on_the_node_then_on_the_head(cluster):
    left = _paliserve(["down"], cluster["node_cache"])
    assert left.returncode == 0 and "left the cluster" in left.stderr, left.stderr
    assert not os.path.exists(cluster["node"]["temp_dir"])  # the store's password file with it
    head_tree = _tree(cluster["state"]["pid"])
    stopped = _paliserve(["down"], cluster["head_cache"], timeout=180)
    assert stopped.returncode == 0 and "paliserve stopped" in stopped.stderr, stopped.stderr
    _, alive = psutil.wait_procs(head_tree, timeout=10)
    assert not alive, [p.pid for p in alive]
