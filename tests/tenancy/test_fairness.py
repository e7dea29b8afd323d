"""The VTC fair queue: service in proportion to weights between backlogged tenants (bounded
difference), work conservation, no banked credit, and the asyncio gate's waiting rules."""

import asyncio
import random

import pytest

from serve.errors import Overloaded
from serve.tenancy.fairness import MIN_WAIT_SAMPLES, FairGate, VirtualTokenCounters


def serve_backlogged(weights: dict[str, float], costs: dict[str, list[int]], rounds: int) -> dict[str, int]:
    """Every tenant always has work queued; one slot; return the tokens each was served."""
    vtc, served, rng = VirtualTokenCounters(), dict.fromkeys(weights, 0), random.Random(0)
    for tenant in weights:
        for _ in range(2):
            vtc.enqueue(tenant, weights[tenant], rng.choice(costs[tenant]), tenant)
    for _ in range(rounds):
        waiter = vtc.pop()
        served[waiter.tenant] += waiter.cost
        vtc.enqueue(waiter.tenant, weights[waiter.tenant], rng.choice(costs[waiter.tenant]), waiter.tenant)
    return served


def test_equal_weights_get_equal_tokens_within_one_request():
    costs = {"small": [10, 20, 30], "big": [200, 400]}
    served = serve_backlogged({"small": 1, "big": 1}, costs, rounds=2000)
    assert abs(served["small"] - served["big"]) <= 2 * 400  # VTC's bound: on the order of the largest request


def test_service_follows_the_weights():
    served = serve_backlogged({"gold": 3, "bronze": 1}, {"gold": [50], "bronze": [50]}, rounds=4000)
    assert served["gold"] / served["bronze"] == pytest.approx(3.0, rel=0.01)


def test_a_flooder_cannot_delay_a_newcomer_by_more_than_one_request():
    vtc = VirtualTokenCounters()
    for i in range(100):
        vtc.enqueue("flood", 1, 50, f"f{i}")
    for _ in range(10):
        vtc.pop()
    vtc.enqueue("quiet", 1, 50, "q")
    order = [vtc.pop().item for _ in range(3)]
    assert "q" in order[:2]


def test_idle_time_banks_no_credit():
    vtc = VirtualTokenCounters()
    for i in range(50):
        vtc.enqueue("busy", 1, 10, i)
    for _ in range(50):
        vtc.pop()  # busy's counter is now 500; "late" never asked for anything
    for i in range(20):
        vtc.enqueue("busy", 1, 10, f"b{i}")
        vtc.enqueue("late", 1, 10, f"l{i}")
    first_twenty = [vtc.pop().tenant for _ in range(20)]
    assert first_twenty.count("late") <= 11  # alternates; it cannot take 50 turns in a row


def test_work_conserving_a_lone_tenant_gets_every_slot():
    served = serve_backlogged({"only": 1}, {"only": [10]}, rounds=100)
    assert served["only"] == 1000


async def _hold(gate: FairGate, tenant: str, log: list, hold: asyncio.Event, cost: int = 10):
    await gate.admit(tenant, 1.0, cost)
    log.append(tenant)
    await hold.wait()
    gate.release(tenant, 1.0, cost, cost)


def test_gate_admits_at_most_capacity_and_lets_a_quiet_tenant_ahead_of_a_backlog():
    async def scenario():
        gate, log, hold = FairGate(capacity=2), [], asyncio.Event()
        flood = [asyncio.create_task(_hold(gate, "flood", log, hold)) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert gate.running == 2 and gate.vtc.waiting("flood") == 18
        quiet = asyncio.create_task(_hold(gate, "quiet", log, hold))
        await asyncio.sleep(0.01)
        hold.set()
        await asyncio.gather(*flood, quiet)
        return log

    log = asyncio.run(scenario())
    assert log.index("quiet") <= 3  # two already running, then at most one flood request ahead
    assert len(log) == 21


def test_gate_is_work_conserving():
    async def scenario():
        gate, log, hold = FairGate(capacity=4), [], asyncio.Event()
        tasks = [asyncio.create_task(_hold(gate, "a", log, hold)) for _ in range(3)]
        await asyncio.sleep(0.01)
        running = gate.running
        hold.set()
        await asyncio.gather(*tasks)
        return running, gate.running

    assert asyncio.run(scenario()) == (3, 0)  # nobody waited while a slot was free


def test_a_cancelled_waiter_leaves_the_queue_and_its_slot_goes_on():
    async def scenario():
        gate, log, hold = FairGate(capacity=1), [], asyncio.Event()
        first = asyncio.create_task(_hold(gate, "a", log, hold))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(_hold(gate, "b", log, hold))
        third = asyncio.create_task(_hold(gate, "c", log, hold))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert gate.vtc.waiting() == 1
        hold.set()
        await asyncio.gather(first, third)
        return log, gate.running

    assert asyncio.run(scenario()) == (["a", "c"], 0)


def test_waiting_too_long_or_too_many_is_503_with_retry_after():
    async def scenario():
        gate, hold = FairGate(capacity=1, max_waiting=1, max_wait_s=0.05), asyncio.Event()
        holder = asyncio.create_task(_hold(gate, "a", [], hold))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(gate.admit("b", 1.0, 10))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as full:
            await gate.admit("c", 1.0, 10)
        with pytest.raises(Overloaded) as late:
            await waiter
        hold.set()
        await holder
        return full.value, late.value, gate

    full, late, gate = asyncio.run(scenario())
    assert full.status_code == late.status_code == 503
    assert "Retry-After" in full.headers and "Retry-After" in late.headers
    assert gate.running == 0 and gate.vtc.waiting() == 0


def test_ahead_of_counts_own_queue_and_each_other_tenants_weighted_share():
    vtc = VirtualTokenCounters()
    for i in range(30):
        vtc.enqueue("flood", 1, 10, f"f{i}")
    assert vtc.ahead_of("quiet", 1) == 1  # one flood request may leave first, not thirty
    vtc.enqueue("quiet", 1, 10, "q0")
    assert vtc.ahead_of("quiet", 1) == 1 + 2
    assert vtc.ahead_of("gold", 4) == 2  # a quarter turn of each backlogged tenant's, rounded up
    assert vtc.ahead_of("flood", 1) == 30 + 1  # behind its own thirty and the quiet tenant's one


def test_a_request_that_would_wait_past_its_budget_is_refused_at_once_with_retry_after():
    async def scenario():
        gate, hold = FairGate(capacity=2), asyncio.Event()
        assert gate.p95_wait(gate.mean_wait("a", 1.0)) is None  # nothing measured yet: no early refusal
        gate.service_s = 4.0
        holders = [asyncio.create_task(_hold(gate, "a", [], hold)) for _ in range(2)]
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(gate.admit("a", 1.0, 10, ttft_slo_s=10.0)) for _ in range(4)]
        await asyncio.sleep(0.01)  # queued: expected waits 2, 4, 6 and 8 s
        assert gate.vtc.waiting() == 4
        with pytest.raises(Overloaded) as refused:
            await gate.admit("a", 1.0, 10, ttft_slo_s=9.0)  # fifth in line: 10 s
        quiet = asyncio.create_task(gate.admit("b", 1.0, 10, ttft_slo_s=3.0))  # behind one of a's: 4 s
        await asyncio.sleep(0.01)
        assert quiet.done() and isinstance(quiet.exception(), Overloaded)
        fits = asyncio.create_task(gate.admit("c", 1.0, 10, ttft_slo_s=5.0))
        await asyncio.sleep(0.01)
        assert not fits.done()  # waits: 4 s is within its budget
        for task in [*waiting, fits]:
            task.cancel()
        hold.set()
        await asyncio.gather(*holders)
        return refused.value, gate

    refused, gate = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "10"
    assert "10.0 s" in refused.message and "9.0 s" in refused.message
    assert gate.running == 0 and gate.vtc.waiting() == 0


def test_service_time_is_a_moving_average_of_slot_holding_time():
    gate = FairGate(capacity=1)
    gate.running = 2
    gate.release("a", 1.0, 10, 10, held_s=1.0)
    gate.release("a", 1.0, 10, 10, held_s=2.0)
    assert gate.service_s == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)


def test_the_wait_budget_is_the_ttft_objective_less_the_recent_p95_time_to_first_token():
    gate = FairGate(capacity=1)
    assert gate.wait_budget(2.0) == 2.0
    for ms in range(1, 101):
        gate.first_token(ms / 1000)
    assert gate.wait_budget(2.0) == pytest.approx(2.0 - 0.095)


def test_the_expected_wait_is_the_mean_based_estimate_scaled_to_the_p95_of_recent_waits():
    gate = FairGate(capacity=2)
    gate.service_s = 1.0
    gate.wait_over_estimate.extend([3.0] * (MIN_WAIT_SAMPLES - 1))
    assert gate.p95_wait(gate.mean_wait("a", 1.0)) == pytest.approx(0.5)  # too few waits seen: slots assumed to free evenly
    gate.wait_over_estimate.clear()
    gate.wait_over_estimate.extend(i / 50 for i in range(1, 101))
    assert gate.p95_wait(gate.mean_wait("a", 1.0)) == pytest.approx(0.5 * 1.9)


def test_a_queued_request_records_its_wait_over_its_estimate():
    async def scenario():
        gate, hold = FairGate(capacity=1), asyncio.Event()
        gate.service_s = 1.0
        holder = asyncio.create_task(_hold(gate, "a", [], hold))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(gate.admit("b", 1.0, 10, ttft_slo_s=5.0))  # estimate: 1 s
        await asyncio.sleep(0.2)
        hold.set()
        await asyncio.gather(holder, queued)
        gate.release("b", 1.0, 10, 10)
        return gate

    gate = asyncio.run(scenario())
    assert len(gate.wait_over_estimate) == 1
    assert 0.15 < gate.wait_over_estimate[0] < 1.0  # waited about 0.2 s of the 1 s estimated


def skewed_replicas(share: bool, rounds: int = 4000) -> dict[str, float]:
    """Two ingress replicas with one slot each; tenant `a` (weight 3) sends only to replica 1,
    `b` (weight 1) to both; everyone always backlogged. Every 10 turns the replicas share their
    counters (as SharedCounters does through Redis) when `share`. Tokens served per tenant."""
    weights = {"a": 3.0, "b": 1.0}
    replicas = [VirtualTokenCounters(), VirtualTokenCounters()]
    arrivals = [["a", "b"], ["b"]]
    shared: dict[str, float] = {}
    served = dict.fromkeys(weights, 0.0)
    for vtc, tenants in zip(replicas, arrivals):
        for tenant in tenants:
            for _ in range(2):
                vtc.enqueue(tenant, weights[tenant], 10, tenant)
    for turn in range(rounds):
        for vtc, tenants in zip(replicas, arrivals):
            waiter = vtc.pop()
            served[waiter.tenant] += waiter.cost
            vtc.enqueue(waiter.tenant, weights[waiter.tenant], 10, waiter.tenant)
        if share and turn % 10 == 9:
            for vtc in replicas:
                added = vtc.take_unsynced()
                for tenant, tokens in added.items():
                    shared[tenant] = shared.get(tenant, 0.0) + tokens
                vtc.merge(dict(shared), added)
    return served


def test_shared_counters_keep_the_weights_across_replicas_under_skew():
    """Per replica, replica 1 splits its slot 3:1 and replica 2 gives all of its to `b`: `a` gets
    3/8 of the cluster (its weight asks 3/4). Shared, replica 1 counts what `b` got on replica 2
    and gives `a` its whole slot: 1/2, the most this skew allows (replica 2 sees only `b`)."""
    alone, shared = skewed_replicas(share=False), skewed_replicas(share=True)
    share_alone = alone["a"] / sum(alone.values())
    share_shared = shared["a"] / sum(shared.values())
    assert share_alone == pytest.approx(3 / 8, abs=0.01)
    assert share_shared == pytest.approx(1 / 2, abs=0.01)


def spread_unevenly(share: bool) -> float:
    """`a` (weight 1) lands 90% on replica 0; `b` (weight 1) spreads evenly; one slot per replica,
    two arrivals per turn. a's share of the tokens served."""
    rng = random.Random(1)
    replicas = [VirtualTokenCounters(), VirtualTokenCounters()]
    shared: dict[str, float] = {}
    served = {"a": 0.0, "b": 0.0}
    for vtc in replicas:
        for tenant in served:
            vtc.enqueue(tenant, 1.0, 10, tenant)
    for turn in range(4000):
        for vtc in replicas:
            waiter = vtc.pop()
            if waiter is not None:
                served[waiter.tenant] += waiter.cost
        for tenant in ("a", "b"):
            target = (0 if rng.random() < 0.9 else 1) if tenant == "a" else rng.randrange(2)
            replicas[target].enqueue(tenant, 1.0, 10, tenant)
        if share and turn % 10 == 9:
            for vtc in replicas:
                added = vtc.take_unsynced()
                for tenant, tokens in added.items():
                    shared[tenant] = shared.get(tenant, 0.0) + tokens
                vtc.merge(dict(shared), added)
    return served["a"] / sum(served.values())


def test_shared_counters_reach_the_weights_when_arrivals_are_skewed():
    """Per replica, replica 0 (backlogged with both) splits 1:1 and replica 1 serves mostly `b`:
    `a` gets about 0.38 of the cluster. Shared, replica 0 favours `a` for what `b` got on
    replica 1, and the cluster splits 1:1 (within 10%, the issue's bound)."""
    assert spread_unevenly(share=False) < 0.40
    assert spread_unevenly(share=True) == pytest.approx(0.5, rel=0.10)


def test_unshared_tokens_are_kept_for_the_next_round():
    vtc = VirtualTokenCounters()
    vtc.charge("a", 2.0, 100)
    added = vtc.take_unsynced()
    assert added == {"a": 100} and vtc.take_unsynced() == {}
    vtc.unshared(added)  # the round failed
    vtc.charge("a", 2.0, 50)
    added = vtc.take_unsynced()
    assert added == {"a": 150}
    vtc.merge({"a": 400.0}, added)  # 250 served elsewhere, weight 2
    assert vtc.elsewhere["a"] == pytest.approx(125.0)
    assert vtc.counter("a") == pytest.approx(150 / 2 + 125)
    vtc.merge({"a": 10.0}, {})  # the hash expired and started again: nothing elsewhere
    assert vtc.elsewhere["a"] == 0.0
