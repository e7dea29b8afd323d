"""Weighted fair admission to the engines when they are full: Virtual Token Counters (VTC,
Sheng et al., OSDI'24).

Each tenant has a counter of the tokens it has been served divided by its weight. A free engine
slot goes to the backlogged tenant with the smallest counter, so backlogged tenants receive
tokens in proportion to their weights, and a slot never idles while anyone waits
(work-conserving: what a quiet tenant leaves unused goes to the others). A tenant that becomes
backlogged has its counter lifted to the smallest backlogged counter, so idling banks no credit.

Hand-written: Ray Serve routes requests to replicas but has no per-tenant queueing, and vLLM's
scheduler (FCFS or priority) knows nothing of tenants.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from serve.errors import Overloaded, retry_after


SERVICE_EWMA = 0.2  # weight of the newest request in the moving average of slot holding time
TTFT_SAMPLES = 200  # recent first-token times (without the wait for a slot) kept for their p95
WAIT_SAMPLES = 200  # recent waits for a slot, each over its mean-based estimate, kept for their p95
MIN_WAIT_SAMPLES = 20  # fewer than this and the estimate is the mean-based one


def _p95(values) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


@dataclass
class _Waiter:
    tenant: str
    weight: float
    cost: int
    item: Any
    seq: int


@dataclass
class VirtualTokenCounters:
    """The pure VTC scheduler: queues per tenant, counters, and who goes next."""

    counters: dict[str, float] = field(default_factory=dict)
    queues: dict[str, deque] = field(default_factory=dict)
    # Other ingress replicas' service, in counter units (tokens / weight), from the shared
    # counters (serve/tenancy/fairshare.py): a tenant served elsewhere waits behind one that was
    # not, so the cluster's shares follow the weights however arrivals spread over replicas.
    elsewhere: dict[str, float] = field(default_factory=dict)
    unsynced: dict[str, float] = field(default_factory=dict)  # tokens served here, not yet shared
    synced: dict[str, float] = field(default_factory=dict)  # tokens served here and shared
    weights: dict[str, float] = field(default_factory=dict)  # last weight seen per tenant
    _seq: itertools.count = field(default_factory=itertools.count)
    _last_served: float = 0.0

    def counter(self, tenant: str) -> float:
        """The tenant's counter as the choice sees it: here plus elsewhere."""
        return self.counters.get(tenant, 0.0) + self.elsewhere.get(tenant, 0.0)

    def enqueue(self, tenant: str, weight: float, cost: int, item: Any) -> None:
        queue = self.queues.setdefault(tenant, deque())
        self.weights[tenant] = weight
        if not queue:
            backlogged = [self.counter(t) for t, q in self.queues.items() if q and t != tenant]
            floor = min(backlogged) if backlogged else self._last_served
            self.counters[tenant] = max(self.counters.get(tenant, 0.0), floor - self.elsewhere.get(tenant, 0.0))
        queue.append(_Waiter(tenant, weight, cost, item, next(self._seq)))

    def pop(self) -> _Waiter | None:
        """The head request of the backlogged tenant with the smallest counter (ties: oldest)."""
        heads = [q[0] for q in self.queues.values() if q]
        if not heads:
            return None
        chosen = min(heads, key=lambda w: (self.counter(w.tenant), w.seq))
        self.queues[chosen.tenant].popleft()
        self.charge(chosen.tenant, chosen.weight, chosen.cost)
        self._last_served = self.counter(chosen.tenant)
        return chosen

    def charge(self, tenant: str, weight: float, tokens: float) -> None:
        self.counters[tenant] = self.counters.get(tenant, 0.0) + tokens / weight
        self.unsynced[tenant] = self.unsynced.get(tenant, 0.0) + tokens
        self.weights[tenant] = weight

    def take_unsynced(self) -> dict[str, float]:
        """The tokens served here since the last call, to add to the shared counters."""
        taken, self.unsynced = self.unsynced, {}
        return taken

    def merge(self, shared: dict[str, float], added: dict[str, float]) -> None:
        """`added` reached the shared counters, whose totals (every replica's tokens per tenant)
        are now `shared`: what other replicas served becomes `elsewhere`."""
        for tenant, tokens in added.items():
            self.synced[tenant] = self.synced.get(tenant, 0.0) + tokens
        for tenant, total in shared.items():
            others = max(0.0, total - self.synced.get(tenant, 0.0))  # an expired hash: nothing elsewhere
            self.elsewhere[tenant] = others / self.weights.get(tenant, 1.0)

    def unshared(self, deltas: dict[str, float]) -> None:
        """`deltas` could not be added to the shared counters: keep them for the next try."""
        for tenant, tokens in deltas.items():
            self.unsynced[tenant] = self.unsynced.get(tenant, 0.0) + tokens

    def remove(self, item: Any) -> bool:
        for queue in self.queues.values():
            for waiter in queue:
                if waiter.item is item:
                    queue.remove(waiter)
                    return True
        return False

    def ahead_of(self, tenant: str, weight: float) -> int:
        """About how many waiting requests leave before a new one of `tenant`: its own queue,
        and from each other backlogged tenant its weighted share of as many turns."""
        own = len(self.queues.get(tenant, ()))
        others = (
            min(len(q), math.ceil((own + 1) * q[0].weight / weight))
            for t, q in self.queues.items()
            if q and t != tenant
        )
        return own + sum(others)

    def waiting(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return len(self.queues.get(tenant, ()))
        return sum(len(q) for q in self.queues.values())


class FairGate:
    """At most `capacity` requests at the engines; the rest wait and leave in VTC order.

    `admit` charges the request's estimated tokens; `release` corrects the estimate with the
    tokens actually used and hands the slot on.
    """

    def __init__(self, capacity: int, max_waiting: int = 1024, max_wait_s: float = 60.0):
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.running = 0
        self.vtc = VirtualTokenCounters()
        self.service_s: float | None = None  # moving average of how long a request holds a slot
        # receipt to first token less the wait for a slot: the part of TTFT the gate does not decide
        self.unqueued_ttft_s: deque[float] = deque(maxlen=TTFT_SAMPLES)
        # slots free in bursts, not evenly: the mean-based estimate is short of a p95 by this factor
        self.wait_over_estimate: deque[float] = deque(maxlen=WAIT_SAMPLES)

    def first_token(self, unqueued_s: float) -> None:
        self.unqueued_ttft_s.append(unqueued_s)

    def wait_budget(self, ttft_slo_s: float) -> float:
        """What a TTFT objective leaves for waiting: the objective less the p95, seen lately, of
        the time from the request's arrival at the replica to its first token without the wait
        for a slot (parsing, image decoding and the engine's prefill, on a busy machine too)."""
        return ttft_slo_s - (_p95(self.unqueued_ttft_s) if self.unqueued_ttft_s else 0.0)

    def mean_wait(self, tenant: str, weight: float) -> float | None:
        """Seconds a request arriving now would wait for a slot if slots freed evenly, once
        service times are known."""
        if self.service_s is None:
            return None
        return (self.vtc.ahead_of(tenant, weight) + 1) * self.service_s / self.capacity

    def p95_wait(self, mean_wait_s: float | None) -> float | None:
        """The p95 of a wait whose mean-based estimate is `mean_wait_s`: scaled by the p95 of recent
        waits over their estimates (the objectives are p95s; slots free in bursts)."""
        if mean_wait_s is None or len(self.wait_over_estimate) < MIN_WAIT_SAMPLES:
            return mean_wait_s
        return mean_wait_s * _p95(self.wait_over_estimate)

    async def admit(self, tenant: str, weight: float, estimate: int, ttft_slo_s: float | None = None) -> None:
        """Take a slot, waiting in VTC order when all are taken. A request whose expected wait
        is over what its TTFT objective leaves (`wait_budget`) is refused at once (503,
        Retry-After) instead of queueing into a latency its tenant's SLO does not allow."""
        if self.running < self.capacity and not self.vtc.waiting():
            self.running += 1
            self.vtc.charge(tenant, weight, estimate)
            return
        if self.vtc.waiting() >= self.max_waiting:
            raise Overloaded(
                f"The server is overloaded: {self.vtc.waiting()} requests are waiting. Retry shortly.",
                code="overloaded",
                headers=retry_after(1),
            )
        mean = self.mean_wait(tenant, weight)
        expected = self.p95_wait(mean)
        wait_budget_s = self.wait_budget(ttft_slo_s) if ttft_slo_s is not None else None
        if wait_budget_s is not None and expected is not None and expected > wait_budget_s:
            raise Overloaded(
                f"The server is overloaded: the wait for the engines is about {expected:.1f} s, more than this "
                f"tenant's latency objective leaves for waiting ({max(0.0, wait_budget_s):.1f} s). Retry shortly.",
                code="overloaded",
                headers=retry_after(expected),
            )
        granted = asyncio.get_running_loop().create_future()
        self.vtc.enqueue(tenant, weight, estimate, granted)
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.max_wait_s)
            if mean:
                self.wait_over_estimate.append((time.monotonic() - started) / mean)
        except (asyncio.CancelledError, asyncio.TimeoutError) as exc:
            if granted.done() and not granted.cancelled():
                self.release(tenant, weight, estimate, 0)  # granted just as the caller gave up: pass it on
            else:
                granted.cancel()
                self.vtc.remove(granted)
            if isinstance(exc, asyncio.TimeoutError):
                raise Overloaded(
                    f"The request waited {time.monotonic() - started:.0f} s for the engines; the server is "
                    "overloaded. Retry shortly.",
                    code="overloaded",
                    headers=retry_after(5),
                ) from None
            raise

    def release(self, tenant: str, weight: float, estimate: int, actual: int, held_s: float | None = None) -> None:
        self.running -= 1
        if held_s is not None:
            self.service_s = held_s if self.service_s is None else (1 - SERVICE_EWMA) * self.service_s + SERVICE_EWMA * held_s
        if actual != estimate:
            self.vtc.charge(tenant, weight, actual - estimate)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.running < self.capacity:
            waiter = self.vtc.pop()
            if waiter is None:
                return
            if waiter.item.done():  # gave up while waiting
                continue
            self.running += 1
            waiter.item.set_result(None)
