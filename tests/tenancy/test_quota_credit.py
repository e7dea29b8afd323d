"""Local credit over the quota store (serve/tenancy/credit.py), against a real redis-server this
module starts (its own port and directory, stopped by PID): busy tenants are admitted from
credit and counted once, limits stay exact near the limit with one and two gateways, unused
credit is handed back when it lapses, a store that goes down fails admission closed once the
credit lapses, settlements never overtake their admission, and the window slides from when a
credit was used."""

import asyncio
import time
from pathlib import Path

import pytest

from paliserve.spec import TenantLimits
from serve.cluster import free_port
from serve.redis_server import LocalRedis, find_redis_server
from redis_fixture import redis_server  # noqa: F401 (a fixture)
from serve.tenancy.credit import FLUSH_S, QuotaCredit
from serve.tenancy.quotas import QuotaStore, QuotaUnavailable, keys


def store_of(info, **kwargs) -> QuotaStore:
    return QuotaStore(info.url, Path(info.password_file).read_text(), **kwargs)


async def counts(store: QuotaStore, tenant: str) -> tuple[int, int]:
    """(entries in the request log, concurrency leases) for `tenant` in Redis."""
    req, _, _, conc = keys(tenant)
    return await store.redis.zcard(req), await store.redis.zcard(conc)


async def admit(credit: QuotaCredit, tenant: str, limits: TenantLimits):
    """The gateway's order: credit first, else ask the store. (id, rejection)."""
    member = credit.take(tenant, limits)
    if member is not None:
        return member, None
    return await credit.acquire(tenant, limits)


@pytest.fixture
def fresh(redis_server):
    async def flush():
        store = store_of(redis_server)
        await store.redis.flushdb()
        await store.aclose()

    asyncio.run(flush())
    return redis_server


def test_a_busy_tenant_is_admitted_from_credit_and_counted_once(fresh):
    limits = TenantLimits(requests_per_min=100_000, max_concurrency=100_000)

    async def scenario():
        store = store_of(fresh)
        credit = QuotaCredit(store, gateways=1)
        ids = []
        for _ in range(500):
            request_id, rejection = await admit(credit, "busy", limits)
            assert rejection is None
            ids.append(request_id)
            await asyncio.sleep(0)
        for request_id in ids:
            credit.settle("busy", request_id, 10)
        await credit.aclose()  # unused credit handed back, settlements sent
        found = await counts(store, "busy")
        await store.aclose()
        return credit, ids, found

    credit, ids, (requests, leases) = asyncio.run(scenario())
    print(f"\n500 admissions: {credit.local} from credit, {credit.asked} asked the store")
    assert len(set(ids)) == 500
    assert credit.local > 400 and credit.local + credit.asked == 500
    assert (requests, leases) == (500, 0)  # each admission counted once, every lease gone


def test_one_gateway_refuses_exactly_at_the_limit_with_credit(fresh):
    """Requests, concurrency and tokens, one gateway: the first refusal comes at the configured
    number although most admissions came from credit."""
    async def scenario():
        store = store_of(fresh)
        credit = QuotaCredit(store, gateways=1)
        rpm = TenantLimits(requests_per_min=400)
        results = [await admit(credit, "rpm", rpm) for _ in range(450)]
        first = next(i for i, (_, r) in enumerate(results) if r is not None)
        refusals = {r.limit for _, r in results[first:]}
        local_rpm = credit.local

        conc = TenantLimits(max_concurrency=60)
        held = [await admit(credit, "conc", conc) for _ in range(80)]
        conc_first = next(i for i, (_, r) in enumerate(held) if r is not None)
        credit.settle("conc", held[0][0], 0)
        again = await admit(credit, "conc", conc)

        tpm = TenantLimits(tokens_per_min=3_000)
        used, tokens_refused_at = 0, None
        for _ in range(100):
            request_id, rejection = await admit(credit, "tpm", tpm)
            if rejection is not None:
                tokens_refused_at = (used, rejection.limit)
                break
            credit.settle("tpm", request_id, 70)
            used += 70
            await asyncio.sleep(0)
        await credit.aclose()
        await store.aclose()
        return first, refusals, local_rpm, conc_first, again[1], tokens_refused_at, credit.local

    first, refusals, local_rpm, conc_first, again, tokens_refused_at, local = asyncio.run(scenario())
    print(f"\nrequests_per_min=400: first refusal at {first + 1} ({local_rpm} from credit); max_concurrency=60: "
          f"at {conc_first + 1}; tokens_per_min=3000: after {tokens_refused_at}")
    assert first == 400 and refusals == {"requests_per_min"}
    assert local_rpm > 200
    assert conc_first == 60 and again is None  # a settled slot is free again
    assert tokens_refused_at == (3010, "tokens_per_min")  # 43 x 70: the first over the limit


def test_two_gateways_share_one_exact_limit_with_credit(fresh):
    """Two gateways (credit sized for 2) on one Redis, a tenant alternating between them one
    request at a time (as the stack test does): the first `limit` pass and none after; then the
    same limit hammered by 16 callers on each at once: never more than the limit, and once the
    credit is handed back, exactly the limit."""
    limit = 300

    async def scenario():
        stores = [store_of(fresh) for _ in range(2)]
        gateways = [QuotaCredit(s, gateways=2) for s in stores]
        limits = TenantLimits(requests_per_min=limit)
        alternating = [(await admit(gateways[i % 2], "alt", limits))[1] is None for i in range(limit + 30)]
        local_alternating = [g.local for g in gateways]

        admitted = [0, 0]

        async def caller(i):
            for _ in range(40):
                _, rejection = await admit(gateways[i], "burst", limits)
                admitted[i] += rejection is None
                await asyncio.sleep(0)

        await asyncio.gather(*(caller(i) for i in (0, 1) for _ in range(16)))
        during = sum(admitted)
        for g in gateways:
            await g.aclose()
        later = 0  # what the handed-back credit leaves: exactly the rest of the limit
        for _ in range(limit):
            _, rejection = await gateways[0].acquire("burst", limits)
            later += rejection is None
        for s in stores:
            await s.aclose()
        return alternating, local_alternating, during, later, [g.local for g in gateways]

    alternating, local_alternating, during, later, local = asyncio.run(scenario())
    print(f"\nrequests_per_min={limit}, 2 gateways alternating: first refusal at {alternating.index(False) + 1} "
          f"(from credit: {local_alternating}); 32 callers: {during} admitted, {later} more after hand-back "
          f"(from credit: {local})")
    assert alternating == [True] * limit + [False] * 30
    assert all(n > 0 for n in local_alternating)
    assert during <= limit and during + later == limit


def test_unused_credit_is_handed_back_when_it_lapses(fresh):
    async def scenario():
        store = store_of(fresh)
        credit = QuotaCredit(store, gateways=1, ttl_s=0.3)
        limits = TenantLimits(requests_per_min=10_000)
        admitted, reserved = 0, 0
        while reserved <= admitted and admitted < 500:  # until some credit is held unused
            await admit(credit, "lapse", limits)
            admitted += 1
            reserved = (await counts(store, "lapse"))[0]
        await asyncio.sleep(0.3 + 2 * FLUSH_S + 0.1)  # lapsed, handed back by the next flush
        after = await counts(store, "lapse")
        await credit.aclose()
        await store.aclose()
        return admitted, reserved, after

    admitted, reserved, (requests, leases) = asyncio.run(scenario())
    print(f"\n{admitted} admissions: {reserved} entries with credit held, {requests} once it lapsed")
    assert reserved > admitted
    assert requests == admitted and leases == admitted  # the admitted still hold their (unsettled) leases


def test_a_store_that_goes_down_fails_admission_closed_once_the_credit_lapses(tmp_path):
    """Credit outlives the store by at most its lifetime; then 503 (QuotaUnavailable); restarted,
    the same client admits again."""
    from serve.redis_server import start_redis, stop_redis

    server = LocalRedis(find_redis_server(), free_port(), str(tmp_path / "redis"))
    info = server.start()
    ttl = 0.4

    async def scenario():
        store = store_of(info, timeout_s=0.3)
        credit = QuotaCredit(store, gateways=1, ttl_s=ttl)
        limits = TenantLimits(requests_per_min=10_000)
        admitted, reserved = 0, 0
        while reserved <= admitted + 2 and admitted < 500:  # until a few credits are held unused
            await admit(credit, "down", limits)
            admitted += 1
            reserved = (await counts(store, "down"))[0]
        stop_redis(info, remove=False)
        down_at = time.monotonic()
        local_while_down, failed_after = 0, None
        while time.monotonic() - down_at < 3:
            try:
                _, rejection = await admit(credit, "down", limits)
                assert rejection is None
                local_while_down += 1
            except QuotaUnavailable:
                failed_after = time.monotonic() - down_at
                break
            await asyncio.sleep(0.01)
        info.pid = start_redis(find_redis_server(), info)
        back = [(await admit(credit, "down", limits))[1] for _ in range(3)]
        await credit.aclose()
        await store.aclose()
        return local_while_down, failed_after, back

    try:
        local_while_down, failed_after, back = asyncio.run(scenario())
    finally:
        server.stop()
    print(f"\nstore down: {local_while_down} admitted from credit, then unavailable after {failed_after:.2f} s")
    assert local_while_down > 0  # the credit held when the store went down was used
    assert failed_after is not None and failed_after < ttl + 0.3 + 0.2  # credit lifetime + the call's timeout
    assert back == [None, None, None]


def test_a_settlement_never_reaches_the_store_before_its_admission(fresh):
    """Requests admitted from credit and by asking, settled at once, before any bookkeeping left:
    every lease is removed and every token counted (the credit's leases exist from the grant on;
    a tenant's calls travel in order)."""
    async def scenario():
        store = store_of(fresh)
        credit = QuotaCredit(store, gateways=1)
        limits = TenantLimits(requests_per_min=100_000, tokens_per_min=10**9)
        for _ in range(300):
            request_id, rejection = await admit(credit, "order", limits)
            assert rejection is None
            credit.settle("order", request_id, 3)  # in the same turn of the loop as its admission
        await credit.aclose()
        found = await counts(store, "order")
        tokens = int(await store.redis.get(keys("order")[2]))
        await store.aclose()
        return credit, found, tokens

    credit, (requests, leases), tokens = asyncio.run(scenario())
    assert credit.local > 0 and credit.asked > 0
    assert (requests, leases, tokens) == (300, 0, 900)


def test_the_window_slides_from_when_credit_was_used(fresh):
    async def scenario():
        store = store_of(fresh)
        credit = QuotaCredit(store, gateways=1)
        limits = TenantLimits(requests_per_min=100_000)
        while credit.local == 0:  # until credit is held
            await admit(credit, "stamp", limits)
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)
        member = credit.take("stamp", limits)
        used_at = (await store.redis.time())
        await credit.aclose()
        score = await store.redis.zscore(keys("stamp")[0], member)
        await store.aclose()
        return member, used_at[0] * 1000 + used_at[1] / 1000, score

    member, used_ms, score = asyncio.run(scenario())
    assert member is not None
    assert abs(score - used_ms) < 50, (score, used_ms)  # not the reservation's time, 200 ms earlier


def test_limits_changed_live_end_the_credit(fresh):
    async def scenario():
        store = store_of(fresh)
        credit = QuotaCredit(store, gateways=1)
        high, low = TenantLimits(requests_per_min=10_000), TenantLimits(requests_per_min=5)
        for _ in range(10):
            await admit(credit, "live", high)
        while credit.local == 0:
            await admit(credit, "live", high)
        asked = credit.asked
        _, rejection = await admit(credit, "live", low)
        await credit.aclose()
        await store.aclose()
        return credit.asked - asked, rejection

    asked, rejection = asyncio.run(scenario())
    assert asked == 1 and rejection is not None and rejection.limit == "requests_per_min"
