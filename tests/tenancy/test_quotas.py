"""Quota windows in the Redis store (serve/tenancy/quotas.py), against a real redis-server this
module starts on its own port and directory and stops by PID: exact limits, sliding expiry, token
settlement, concurrency leases, Retry-After, live limits, and exactness across processes."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from paliserve.spec import TenantLimits
from serve.cluster import free_port
from serve.redis_server import LocalRedis, find_redis_server
from redis_fixture import redis_server  # noqa: F401 (a fixture)
from serve.tenancy.quotas import WINDOW_S, QuotaStore, QuotaUnavailable

T0 = 1.8e12  # ms: a realistic Redis clock reading


class Ledger:
    """The store driven synchronously with the clock passed in (seconds), like the old ledger."""

    def __init__(self, info, limits: dict[str, TenantLimits], lease_s: float = 600):
        self.runner = asyncio.Runner()
        self.store = QuotaStore(info.url, Path(info.password_file).read_text(), lease_s=lease_s)
        self.limits = limits
        self.ids: dict[str, list[str]] = {}
        self.run(self.store.redis.flushdb())

    def run(self, coro):
        return self.runner.run(coro)

    def acquire(self, tenant: str, now: float):
        request_id = self.store.new_id()
        rejection = self.run(self.store.acquire(tenant, self.limits[tenant], request_id, now_ms=T0 + now * 1000))
        if rejection is None:
            self.ids.setdefault(tenant, []).append(request_id)
        return rejection

    def settle(self, tenant: str, tokens: int, now: float) -> None:
        """The oldest request still in flight ends having used `tokens`."""
        async def settle():
            await self.store.settle_soon(tenant, self.ids[tenant].pop(0), tokens, now_ms=T0 + now * 1000)

        self.run(settle())

    def close(self):
        self.run(self.store.aclose())
        self.runner.close()


@pytest.fixture
def ledger(redis_server):
    made = []

    def make(lease_s: float = 600, **limits):
        q = Ledger(redis_server, {"t": TenantLimits(**limits), "other": TenantLimits(requests_per_min=1)}, lease_s)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()


def test_requests_per_min_refuses_exactly_the_request_over_the_limit(ledger):
    q = ledger(requests_per_min=100)
    results = [q.acquire("t", now=i * 0.1) for i in range(101)]
    for i in range(100):
        q.settle("t", 0, now=i * 0.1)
    assert all(r is None for r in results[:100])
    refused = results[100]
    assert refused.limit == "requests_per_min" and "100 requests per minute" in refused.message
    assert refused.retry_after_s == pytest.approx(WINDOW_S - 10.0)


def test_the_window_slides(ledger):
    q = ledger(requests_per_min=2)
    assert q.acquire("t", 0.0) is None and q.acquire("t", 30.0) is None
    assert q.acquire("t", 59.9) is not None
    assert q.acquire("t", 60.0) is None  # the first left the window
    assert q.acquire("t", 60.1) is not None


def test_refusals_do_not_count_and_tenants_are_separate(ledger):
    q = ledger(requests_per_min=1)
    assert q.acquire("t", 0) is None
    assert all(q.acquire("t", 1 + i) is not None for i in range(10))
    assert q.acquire("other", 1) is None
    assert q.acquire("t", 60) is None


def test_tokens_are_settled_after_the_response(ledger):
    q = ledger(tokens_per_min=1000)
    assert q.acquire("t", 0) is None
    assert q.acquire("t", 0) is None  # nothing settled yet: admitted
    q.settle("t", 600, now=1)
    q.settle("t", 500, now=2)
    refused = q.acquire("t", 3)
    assert refused.limit == "tokens_per_min" and "1100 of its 1000" in refused.message
    # below the limit once the 600 from t=1 leave the window
    assert refused.retry_after_s == pytest.approx(1 + WINDOW_S - 3)
    assert q.acquire("t", 61) is None


def test_max_concurrency_counts_requests_in_flight(ledger):
    q = ledger(max_concurrency=2)
    assert q.acquire("t", 0) is None and q.acquire("t", 0) is None
    refused = q.acquire("t", 0)
    assert refused.limit == "max_concurrency" and refused.retry_after_s > 0
    q.settle("t", 10, now=1)
    assert q.acquire("t", 1) is None


def test_no_limits_admit_everything(ledger):
    q = ledger()
    assert all(q.acquire("t", i * 0.001) is None for i in range(2_000))


def test_a_lease_lapses_when_its_request_never_settles(ledger):
    """A gateway that died with requests in flight cannot hold their slots for ever."""
    q = ledger(lease_s=5, max_concurrency=1)
    assert q.acquire("t", 0) is None
    assert q.acquire("t", 4.9).limit == "max_concurrency"
    assert q.acquire("t", 5.1) is None


def test_limits_are_the_callers_on_each_call(ledger):
    """The store keeps usage only: a limit changed live applies at the next admission."""
    q = ledger(requests_per_min=2)
    assert q.acquire("t", 0) is None and q.acquire("t", 1) is None
    assert q.acquire("t", 2).limit == "requests_per_min"
    q.limits["t"] = TenantLimits(requests_per_min=3)
    assert q.acquire("t", 3) is None
    assert q.acquire("t", 4).limit == "requests_per_min"
    q.limits["t"] = TenantLimits(requests_per_min=3, tokens_per_min=10)
    q.settle("t", 10, now=5)
    assert q.acquire("t", 61).limit == "tokens_per_min"  # the request log left, the tokens not yet
    q.limits["t"] = TenantLimits()
    assert q.acquire("t", 62) is None


def test_a_wrong_password_or_no_server_is_unavailable_at_once(redis_server):
    async def scenario(url, password):
        store = QuotaStore(url, password, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(QuotaUnavailable):
                await store.acquire("t", TenantLimits(requests_per_min=1), store.new_id())
        finally:
            await store.aclose()
        return loop.time() - started

    assert asyncio.run(scenario(redis_server.url, "wrong")) < 0.35
    assert asyncio.run(scenario(f"redis://127.0.0.1:{free_port()}/0", None)) < 0.35


def test_after_a_restart_the_same_client_admits_again(tmp_path):
    """Down: QuotaUnavailable; up again on the same port: the client reconnects (and reloads its
    scripts, which the new server does not have) without being rebuilt."""
    from serve.redis_server import start_redis, stop_redis

    server = LocalRedis(find_redis_server(), free_port(), str(tmp_path / "redis"))
    info = server.start()
    limits = TenantLimits(requests_per_min=100)

    async def scenario():
        store = QuotaStore(info.url, Path(info.password_file).read_text())
        results = [await store.acquire("t", limits, store.new_id())]
        stop_redis(info, remove=False)
        try:
            await store.acquire("t", limits, store.new_id())
            results.append("admitted while down")
        except QuotaUnavailable:
            results.append("unavailable")
        info.pid = start_redis(find_redis_server(), info)
        results.append(await store.acquire("t", limits, store.new_id()))
        await store.aclose()
        return results

    try:
        assert asyncio.run(scenario()) == [None, "unavailable", None]
    finally:
        server.stop()


WORKER = """
import asyncio, json, sys
from paliserve.spec import TenantLimits
from serve.tenancy.quotas import QuotaStore
url, password, attempts = sys.argv[1], sys.argv[2], int(sys.argv[3])
limits = TenantLimits(requests_per_min=int(sys.argv[4]))
async def main():
    store = QuotaStore(url, password, timeout_s=5)
    await store.redis.ping()
    print("ready", flush=True)
    sys.stdin.readline()  # both workers start together
    admitted = 0
    async def caller(n):
        nonlocal admitted
        for _ in range(n):
            if await store.acquire("shared", limits, store.new_id()) is None:
                admitted += 1
    await asyncio.gather(*(caller(attempts // 32) for _ in range(32)))
    print(json.dumps(admitted), flush=True)
asyncio.run(main())
"""


def test_two_gateway_processes_share_one_exact_limit(redis_server):
    """Two processes admitting for one tenant at once, 64 callers in all: together they admit
    exactly the limit (the scripts are atomic in Redis), well within the 5% asked of the cluster."""
    limit, attempts = 500, 640
    password = Path(redis_server.password_file).read_text()
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, redis_server.url, password, str(attempts), str(limit)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
        for _ in range(2)
    ]  # fmt: skip
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        admitted = [json.loads(proc.stdout.readline()) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    print(f"\nrequests_per_min={limit}, 2 processes x {attempts} attempts: admitted {admitted} = {sum(admitted)}")
    assert sum(admitted) == limit
    assert all(a > 0 for a in admitted)


def test_fair_share_counters_are_shared_through_the_store(redis_server):
    """Two replicas' gates add what they served to one hash per model and read the totals back:
    each sees the other's service as `elsewhere` (tokens / weight)."""
    from serve.tenancy.fairness import FairGate
    from serve.tenancy.fairshare import SharedCounters

    async def scenario():
        store = QuotaStore(redis_server.url, Path(redis_server.password_file).read_text())
        await store.redis.flushdb()
        gates = [{"m": FairGate(4)}, {"m": FairGate(4)}]
        sharing = [SharedCounters(store.redis, g) for g in gates]
        gates[0]["m"].vtc.charge("a", 2.0, 300)
        gates[1]["m"].vtc.charge("a", 2.0, 100)
        gates[1]["m"].vtc.charge("b", 1.0, 50)
        for s in sharing + sharing:  # two rounds: each replica sees the other's first round
            await s.sync_once()
        await store.aclose()
        return [g["m"].vtc.elsewhere for g in gates]

    first, second = asyncio.run(scenario())
    assert first == {"a": pytest.approx(100 / 2), "b": pytest.approx(50)}
    assert second == {"a": pytest.approx(300 / 2), "b": 0.0}


def test_two_gateways_share_the_engines_by_weight_under_skew(redis_server):
    """Two gateways' real admission paths (Tenancy, its fair gate with one slot, the counters
    shared through this store) in one event loop, requests held 5 ms each. Tenant `a` sends only
    to gateway 0 (8 callers), `b` to both (4 callers each), weights 1:1, all backlogged. Without
    sharing `a` would get half of gateway 0 only (a quarter of the service); shared, gateway 0
    gives `a` what `b` already got on gateway 1: about half, within 10%."""
    import hashlib

    from paliserve.spec import TenantPlan
    from serve.tenancy.admission import Tenancy, TenancyConfig

    def tenancy(store):
        plans = [TenantPlan(name=n, api_key_sha256=[hashlib.sha256(n.encode()).hexdigest()], models=["m"]).model_dump(mode="json")
                 for n in ("a", "b")]  # fmt: skip
        return Tenancy(TenancyConfig(tenants=plans, capacity={"m": 1}), store)

    async def scenario():
        password = Path(redis_server.password_file).read_text()
        stores = [QuotaStore(redis_server.url, password) for _ in range(2)]
        await stores[0].redis.flushdb()
        gateways = [tenancy(s) for s in stores]
        served = {"a": 0, "b": 0}
        deadline = asyncio.get_running_loop().time() + 6.0

        async def caller(gateway, name):
            tenant = gateway.authenticate(f"Bearer {name}", "127.0.0.1")
            target = gateway.resolve("m", tenant)
            while asyncio.get_running_loop().time() < deadline:
                ticket = await gateway.admit(tenant, target, estimate=30)
                await asyncio.sleep(0.005)
                ticket.finish(200, prompt_tokens=20, completion_tokens=10)
                if asyncio.get_running_loop().time() > deadline - 5.0:  # the first second warms up
                    served[name] += 30

        callers = [caller(gateways[0], "a") for _ in range(8)]
        callers += [caller(g, "b") for g in gateways for _ in range(4)]
        await asyncio.gather(*callers)
        for s in stores:
            await s.aclose()
        return served["a"] / sum(served.values())

    share = asyncio.run(scenario())
    print(f"\na's share with counters shared across 2 gateways (weights 1:1, a on one gateway only): {share:.3f}")
    assert share == pytest.approx(0.5, rel=0.10)


def test_the_gateway_finds_the_store_in_its_environment(redis_server, monkeypatch):
    """What `paliserve up` gives the cluster's processes (RedisInfo.env) is what the gateway reads."""
    from serve.tenancy.quotas import PASSWORD_ENV, PASSWORD_FILE_ENV, URL_ENV

    for name in (URL_ENV, PASSWORD_ENV, PASSWORD_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert QuotaStore.from_env() is None
    for name, value in redis_server.env().items():
        monkeypatch.setenv(name, value)

    async def scenario():
        store = QuotaStore.from_env(lease_s=5)
        try:
            return await store.acquire("env", TenantLimits(requests_per_min=1), store.new_id())
        finally:
            await store.aclose()

    assert asyncio.run(scenario()) is None  # authenticated with the password file, and admitted
