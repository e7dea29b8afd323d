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
from serve.tenancy.credit import FLUSH_S, START_CREDIT, TOLERANCE, QuotaCredit, credit_cap
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


def test_the_credit_a_gateway_may_hold_is_within_the_tolerance_of_each_limit():
    """What R gateways may hold together stays within TOLERANCE (5%) of every limit; a limit so
    tight that one credit per gateway would exceed it gets none (every admission asks)."""
    assert TOLERANCE == 0.05
    assert credit_cap(TenantLimits(), 4, None) is None  # no limit bounds it (MAX_CREDIT does)
    huge = TenantLimits(requests_per_min=10**9, tokens_per_min=10**12, max_concurrency=10**6)
    assert credit_cap(huge, 4, 30.0) > START_CREDIT  # the benchmark's tenants: a full first credit
    assert credit_cap(TenantLimits(requests_per_min=400), 4, None) == 5  # 4 x 5 = 20 = 5% of 400
    assert credit_cap(TenantLimits(requests_per_min=60), 4, None) == 0  # 4 x 1 would be 6.7%
    assert credit_cap(TenantLimits(requests_per_min=60), 1, None) == 3
    assert credit_cap(TenantLimits(max_concurrency=40), 1, None) == 2
    assert credit_cap(TenantLimits(max_concurrency=40), 2, None) == 1
    assert credit_cap(TenantLimits(requests_per_min=10**6, max_concurrency=100), 2, None) == 2  # the tightest
    # tokens cannot be reserved: requests at the tenant's mean tokens per request, none while unknown
    assert credit_cap(TenantLimits(tokens_per_min=100_000), 2, None) == 0
    assert credit_cap(TenantLimits(tokens_per_min=100_000), 2, 100.0) == 25  # 2 x 25 x 100 = 5%
    assert credit_cap(TenantLimits(tokens_per_min=100_000), 2, 0.0) == 2500
    assert credit_cap(TenantLimits(tokens_per_min=3_000), 1, 70.0) == 2
    for gateways in (1, 2, 3, 4, 7, 16):
        for limit in (1, 19, 20, 59, 60, 79, 80, 399, 400, 1_000, 12_345, 10**6):
            for limits in (TenantLimits(requests_per_min=limit), TenantLimits(max_concurrency=limit)):
                assert gateways * credit_cap(limits, gateways, None) <= TOLERANCE * limit
            for per_request in (0.5, 1.0, 37.0, 500.0):
                cap = credit_cap(TenantLimits(tokens_per_min=limit), gateways, per_request)
                assert gateways * cap * max(1.0, per_request) <= TOLERANCE * limit


def test_a_tenant_holding_no_credit_gets_its_first_credit_whole(fresh):
    """Credit does not grow from zero with the tenant's rate: the first that a busy tenant asks
    for (its second admission) is START_CREDIT, or the tolerance's cap when that is less."""
    async def scenario():
        store = store_of(fresh)
        one, four = QuotaCredit(store, gateways=1), QuotaCredit(store, gateways=4)
        high = TenantLimits(requests_per_min=10**9, max_concurrency=10**6)
        for _ in range(2):
            assert (await admit(one, "start", high))[1] is None
        reserved = (await counts(store, "start"))[0] - 2
        from_credit = [one.take("start", high) for _ in range(START_CREDIT)]  # no await: no top-up lands
        tight = TenantLimits(requests_per_min=400)
        for _ in range(2):
            assert (await admit(four, "tight", tight))[1] is None
        tight_reserved = (await counts(store, "tight"))[0] - 2
        for credit in (one, four):
            await credit.aclose()
        await store.aclose()
        return reserved, from_credit, tight_reserved

    reserved, from_credit, tight_reserved = asyncio.run(scenario())
    assert reserved == START_CREDIT
    assert None not in from_credit and len(set(from_credit)) == START_CREDIT
    assert tight_reserved == 5  # 5% of 400 over 4 gateways


@pytest.mark.parametrize("limit_name", ["requests_per_min", "max_concurrency"])
def test_four_gateways_hold_no_more_than_the_tolerance_of_a_tight_limit(fresh, limit_name):
    """Four gateways (credit sized for 4) build credit for one tenant, then three go quiet with
    their credit held (it lapses only after 5 s here) and the fourth admits until refused: it is
    refused no earlier than 95% of the limit (what the others hold unused is within 5%), never
    past it, and once the credit is handed back exactly the limit has been admitted. Requests
    are never settled, so the concurrency limit counts every admission too."""
    limit = 400
    limits = TenantLimits(**{limit_name: limit})

    async def scenario():
        stores = [store_of(fresh) for _ in range(4)]
        gateways = [QuotaCredit(s, gateways=4, ttl_s=5.0) for s in stores]
        admitted, held_most = 0, 0
        for gateway in gateways:  # each a burst: credit asked for and topped up
            for _ in range(20):
                admitted += (await admit(gateway, "tight", limits))[1] is None
                await asyncio.sleep(0)
            await asyncio.sleep(0.02)  # top-ups in flight land
            held_most = max(held_most, (await counts(stores[0], "tight"))[0] - admitted)
        refused = None
        for _ in range(2 * limit):
            _, rejection = await admit(gateways[0], "tight", limits)
            if rejection is not None:
                refused = (admitted, rejection.limit)
                break
            admitted += 1
            held_most = max(held_most, (await counts(stores[0], "tight"))[0] - admitted)
        for gateway in gateways:
            await gateway.aclose()
        after = (await counts(stores[0], "tight"))[0]
        more = 0  # exact admissions (no credit) of what is left
        for _ in range(limit):
            more += await stores[0].acquire("tight", limits, stores[0].new_id()) is None
        for s in stores:
            await s.aclose()
        return held_most, refused, after, admitted, more

    held_most, refused, after, admitted, more = asyncio.run(scenario())
    print(f"\n{limit_name}={limit}, 4 gateways: at most {held_most} held unused; first refusal after {refused}; "
          f"{more} more once the credit was handed back")
    assert held_most <= TOLERANCE * limit
    assert refused is not None and refused[1] == limit_name and (1 - TOLERANCE) * limit <= refused[0] <= limit
    assert after == admitted  # every unused credit handed back
    assert admitted + more == limit
