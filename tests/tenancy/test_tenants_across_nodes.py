"""Live tenants on nodes that joined from other machines, without a cluster: the set the head
publishes in the cluster's GCS (a dict standing in for it), a replica that follows it and reports
there, and `tenants apply`'s wait over the head's status directory and the GCS together."""

from __future__ import annotations

import asyncio
import json
import time

from paliserve.tenants import all_statuses, wait_until_served
from serve.app import tenant_user_config
from serve.cluster_kv import MemoryKV
from serve.tenancy.registry import (KV_SERVED_PREFIX, KV_SET_KEY, KV_VERSION_KEY, TENANTS_KV_ENV, KvWatcher, TenantFeed,
                                    prune_published_statuses, publish_tenants, published_tenants,
                                    read_published_statuses, runtime_tenants,
                                    tenant_set_version, tenants_kv_env)  # fmt: skip
from test_registry import cpu_plan, tenancy_for, tenant, until_accepted


def test_a_published_set_round_trips_and_holds_digests_only():
    kv = MemoryKV()
    tenants = [tenant("alice", "sk-a", weight=2.0), tenant("bob", "sk-b1", "sk-b2")]
    version = publish_tenants(kv, tenants)
    assert kv.get(KV_VERSION_KEY) == version.encode() and version == tenant_set_version(tenants)
    assert published_tenants(kv.get(KV_SET_KEY)) == (version, tenants)
    raw = kv.get(KV_SET_KEY).decode()
    assert "sk-a" not in raw and "sk-b1" not in raw  # keys never, only their digests


class FailingKV(MemoryKV):
    def __init__(self):
        super().__init__()
        self.down = False

    def get(self, key):
        if self.down:
            raise TimeoutError("GCS did not answer")
        return super().get(key)


def test_the_watcher_reads_only_on_a_new_version_and_rides_out_a_gcs_that_does_not_answer():
    kv = FailingKV()
    watcher = KvWatcher(kv)
    assert not watcher.changed() and watcher.read() is None  # nothing published yet
    publish_tenants(kv, [tenant("alice", "sk-a")])
    assert watcher.changed()
    assert [t.name for t in watcher.read()] == ["alice"]
    assert not watcher.changed()
    kv.down = True
    assert not watcher.changed()  # the replica keeps its set
    kv.down = False
    publish_tenants(kv, [tenant("bob", "sk-b")])
    assert watcher.changed() and [t.name for t in watcher.read()] == ["bob"]
    kv.put(KV_SET_KEY, b'{"version": "bad", "files": {"tenants/tenants.yaml": "tenants: 3"}}')
    kv.put(KV_VERSION_KEY, b"bad")
    assert watcher.changed()
    try:
        watcher.read()
        raise AssertionError("a malformed set must be refused")
    except ValueError as exc:
        assert "tenants" in str(exc)
    assert not watcher.changed(), "a refused set is not read again until another is published"


def test_a_replica_on_a_joined_node_follows_the_published_set_and_reports_there(monkeypatch):
    """What a replica does in a joined node's environment (`PALISERVE_TENANTS_KV`, no tenants
    directory): the plan's set until one is published, then each published set within its poll,
    its status under the GCS's `tenants-served/` keys; a set it refuses keeps the one it had."""
    monkeypatch.delenv("PALISERVE_TENANTS_DIR", raising=False)
    monkeypatch.delenv("PALISERVE_TENANTS_STATUS_DIR", raising=False)
    monkeypatch.setenv(TENANTS_KV_ENV, tenants_kv_env()[TENANTS_KV_ENV])
    plan = cpu_plan()
    kv = MemoryKV()
    publish_tenants(kv, runtime_tenants(plan.tenants))  # what `paliserve up` publishes
    tenancy = tenancy_for(plan)

    async def scenario() -> float:
        feed = TenantFeed(tenancy, interval_s=0.05, kv=kv)
        assert isinstance(feed.watcher, KvWatcher)
        await feed.configure(tenant_user_config(plan))
        assert feed.source == "cluster's GCS" and feed.version == tenant_set_version(plan.tenants)
        written = time.monotonic()
        publish_tenants(kv, [tenant("local", "sk-next")])  # `paliserve tenants apply` on the head
        await until_accepted(tenancy, "Bearer sk-next", written)
        took = time.monotonic() - written
        expected = tenant_set_version([tenant("local", "sk-next")])
        while next(iter(read_published_statuses(kv).values()))["version"] != expected:
            await asyncio.sleep(0.01)
            assert time.monotonic() - written < 5
        publish_tenants(kv, [tenant("local", "sk-next", models=["not-served"])])
        while not feed.refused:
            await asyncio.sleep(0.01)
            assert time.monotonic() - written < 5
        feed.stop()
        return took

    assert asyncio.run(scenario()) < 2
    assert tenancy.authenticate("Bearer sk-next", None).name == "local"  # the refused set changed nothing
    (status,) = read_published_statuses(kv).values()
    assert status["source"] == "cluster's GCS" and status["refused"] and "not-served" in status["refused"][0]
    assert [k.startswith(KV_SERVED_PREFIX) for k in kv.keys(b"")].count(True) == 1
    assert "sk-next" not in json.dumps(status)


def test_apply_waits_for_replicas_in_the_status_directory_and_in_the_gcs(tmp_path):
    head, node = "SERVE_REPLICA::paliserve#Gateway#h1", "SERVE_REPLICA::paliserve#Gateway#n1"
    kv = MemoryKV()
    (tmp_path / "h1.json").write_text(json.dumps({"replica": head, "version": "v2", "refused": []}))
    live = {head, node}
    replicas, problems = wait_until_served(tmp_path, "v2", lambda: live, timeout_s=0.2, kv=kv)
    assert problems, "the joined node's replica has not reported: waited for"
    kv.put(KV_SERVED_PREFIX + b"n1.json", json.dumps({"replica": node, "version": "v1", "refused": []}).encode())
    assert wait_until_served(tmp_path, "v2", lambda: live, timeout_s=0.2, kv=kv)[1], "it serves the old set"
    kv.put(KV_SERVED_PREFIX + b"n1.json", json.dumps({"replica": node, "version": "v2", "refused": []}).encode())
    assert wait_until_served(tmp_path, "v2", lambda: live, timeout_s=1, kv=kv) == (2, [])
    assert set(all_statuses(tmp_path, kv)) == {head, node}
    assert set(all_statuses(tmp_path)) == {head}  # the single-machine path, as before


def test_reports_of_replicas_that_are_gone_are_pruned():
    kv = MemoryKV()
    for replica in ("r1", "r2"):
        kv.put(KV_SERVED_PREFIX + replica.encode(), json.dumps({"replica": replica, "version": "v"}).encode())
    kv.put(KV_SERVED_PREFIX + b"broken", b"{")
    assert prune_published_statuses(kv, {"r1"}) == 2
    assert set(read_published_statuses(kv)) == {"r1"} and kv.keys(KV_SERVED_PREFIX) == [KV_SERVED_PREFIX + b"r1"]
