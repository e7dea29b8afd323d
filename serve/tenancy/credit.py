"""Adaptive local credit: a gateway admits a busy tenant that is far from its limits without
waiting on the quota store, and stays exact near them.

Each admission that asks the store (serve/tenancy/quotas.py) may also ask for credit: a few more
admissions, **reserved in Redis at once** (entries in the tenant's request log and concurrency
leases, as members `<credit id>.<n>`) and then handed to the tenant's next requests at this
gateway with no call at all. A gateway may hold at most 1 / (2 x gateways + 1) of what each limit
has left (the store checks it when granting), so far from the limits the credit held by all the
gateways together stays a small part of the headroom, and near them none is granted: every admission is one exact `ACQUIRE` again.
How much is asked follows the tenant's rate here (its admissions in the last `HORIZON_S`, at
most `MAX_CREDIT`; twice that is asked for, and more in the background when what is held falls
to it, credit about to lapse not counted), so a steady tenant does not wait. A tenant holding
none (its rate here still starting from zero) asks for at least `START_CREDIT` at once, so that
it does not run dry again and again while its rate grows. And whatever its rate, one of R
gateways never holds more than `TOLERANCE` / R of any limit (`credit_cap`): all of them together
hold at most 5% of it unused, so a tight limit gets little or no credit. Credit lives
`CREDIT_TTL_S`; what is left then is handed back (members removed). Bookkeeping leaves in one script call per tenant per `FLUSH_S` (sooner for a tenant
without credit, as before): settlements, credit handed back, and the time each credit was really
used (the entry is re-stamped, so the 60 s window slides from the admission, not the reservation).

Why reserve first rather than admit locally and record afterwards: a reservation is counted
before it is used, so no interleaving of gateways can admit more than a limit, and there is no
ordering hazard (a request's settlement removes a lease that is already in Redis; every call of
one tenant also travels on one FIFO lane). The price is the other way round: while a gateway
holds unused credit, another gateway may be refused up to that much early. It cannot happen
with one gateway (its own unused credit is handed back in the same call as an exact admission),
nor while the gateways use their credit about evenly (each holds at most 1/(2R+1) of the
headroom); with uneven traffic it lasts at most `CREDIT_TTL_S`, and comes at most `TOLERANCE`
(5%) of the limit early. Tokens are known only when a
request ends, so credit cannot reserve them: a gateway uses its credit only while the tokens it
settled for the tenant since asking stay under its 1/R share of the tokens then left (exact with
one gateway; with several, the others' settlements reach its view at its next call, at most
`CREDIT_TTL_S` later), and holds at most `TOLERANCE` / R of the limit in requests at the mean
tokens per request it settled for the tenant (none before the first settles). A store that is down fails admission closed once the credit lapses.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import secrets
import time
from collections import deque

from paliserve.spec import TenantLimits
from serve.tenancy.quotas import SETTLE_TIMEOUT_S, QuotaStore, Rejection

logger = logging.getLogger("paliserve.tenancy")

CREDIT_TTL_S = 1.0  # credit unused this long after it was granted is handed back
HORIZON_S = 0.5  # credit asked for: the tenant's admissions here in the last this long
MIN_CREDIT = 2  # a tenant slower than this per HORIZON_S asks the store every time
MAX_CREDIT = 256
# A tenant holding no credit asks for at least this much (its rate here starts from zero, and a
# tenant whose credit grew from there ran dry on its way up): see `credit_cap` for the bound.
START_CREDIT = 64
# Credit one of R gateways holds for a tenant, used or not, stays under TOLERANCE / R of each of
# its limits: what all of them hold unused (which another gateway may be refused early for) stays
# under TOLERANCE of the limit.
TOLERANCE = 0.05
LEAD_S = 0.25  # credit that lapses sooner does not count as held when deciding to ask for more
# (nor credit that lapses sooner than RTT_LEADS credit round trips: `QuotaCredit.rtt_s`, and
# what is held must also last that many round trips at the tenant's rate here)
RTT_LEADS = 2
FLUSH_S = 0.25  # bookkeeping of tenants holding credit leaves this often
QUIET_S = 0.25  # no background request for credit this long after one got none (or failed)
RESTAMP_AFTER_S = 0.005  # credit used within this of its reservation keeps the reservation's time
RETRIES = 3


def credit_cap(limits: TenantLimits, gateways: int, tokens_per_request: float | None) -> int | None:
    """The most credit one of `gateways` gateways may hold for a tenant under `limits` (None: no
    limit bounds it): TOLERANCE of each limit split among the gateways, so that all of them
    together never hold more than TOLERANCE of any limit. Requests and concurrency count entries;
    tokens count requests at the tenant's mean tokens per request here (`tokens_per_request`),
    and none while that is unknown (tokens cannot be reserved: a request's are known at its end)."""
    share, caps = TOLERANCE / max(1, gateways), []
    for limit in (limits.requests_per_min, limits.max_concurrency):
        if limit is not None:
            caps.append(math.floor(limit * share))
    if limits.tokens_per_min is not None:
        caps.append(0 if tokens_per_request is None
                    else math.floor(limits.tokens_per_min * share / max(1.0, tokens_per_request)))  # fmt: skip
    return max(0, min(caps)) if caps else None


class Block:
    """One grant: members `<credit_id>.<next>` .. `.<last>` still to hand out."""

    __slots__ = ("credit_id", "next", "last", "expires", "redis_ms", "granted_at", "tokens_share", "tokens_mark")

    def __init__(self, credit_id: str, last: int, granted_at: float, redis_ms: float, expires: float,
                 tokens_share: float | None, tokens_mark: int):  # fmt: skip
        self.credit_id, self.next, self.last = credit_id, 1, last
        self.granted_at, self.redis_ms, self.expires = granted_at, redis_ms, expires
        self.tokens_share, self.tokens_mark = tokens_share, tokens_mark

    def unused(self) -> list[str]:
        return [f"{self.credit_id}.{n}" for n in range(self.next, self.last + 1)]


class TenantCredit:
    """One tenant at this gateway: its credit, its pending bookkeeping and its recent rate."""

    __slots__ = ("blocks", "limits", "asking", "quiet_until", "settled", "bucket", "previous", "bucket_start",
                 "settles", "restamps", "returns", "attempt", "settled_requests")  # fmt: skip

    def __init__(self):
        self.blocks: deque[Block] = deque()
        self.limits: TenantLimits | None = None  # the limits the credit was granted under
        self.asking: asyncio.Future | None = None  # the call asking for credit, while it is out
        self.quiet_until = 0.0
        self.settled = 0  # tokens settled here, all told (the credit's token share is measured on it)
        self.settled_requests = 0  # requests settled here, all told (tokens per request: first credit)
        self.bucket, self.previous, self.bucket_start = 0, 0, 0.0  # admissions per HORIZON_S
        self.settles: list[tuple[str, int]] = []
        self.restamps: list[tuple[str, float]] = []
        self.returns: list[str] = []
        self.attempt = 0  # how often the pending bookkeeping already failed

    def drain(self) -> tuple[list, list, list, int]:
        batch = (self.settles, self.restamps, self.returns, self.attempt)
        self.settles, self.restamps, self.returns, self.attempt = [], [], [], 0
        return batch

    def give_back(self, block: Block) -> None:
        self.returns.extend(block.unused())


class QuotaCredit:
    """Admission against the quota store with local credit for `gateways` replicas sharing it
    (None: no credit, every admission asks the store, as without this class)."""

    def __init__(self, store: QuotaStore, gateways: int | None, ttl_s: float = CREDIT_TTL_S):
        self.store = store
        self.gateways = gateways
        self.ttl_s = ttl_s
        self._tenants: dict[str, TenantCredit] = {}
        self._prefix = f"c{secrets.token_hex(4)}"
        self._ids = itertools.count()
        self._dirty: set[str] = set()  # tenants with bookkeeping to send
        self._urgent: set[str] = set()  # of which these at once (they hold no credit)
        self._holding: set[str] = set()  # tenants with credit (checked for expiry)
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False
        self._calls: set[asyncio.Future] = set()
        self.local = 0  # admissions from credit
        self.asked = 0  # admissions that asked the store
        self.rtt_s = 0.0  # how long a call asking for credit takes to come back (moving average)

    # ---- the request path ----------------------------------------------------------------

    def take(self, tenant: str, limits: TenantLimits) -> str | None:
        """Admit one request from credit (no call, no wait): its id in the store, or None (ask
        the store: `acquire`)."""
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantCredit()
        now = time.monotonic()
        if now - state.bucket_start >= HORIZON_S:
            state.previous = state.bucket if now - state.bucket_start < 2 * HORIZON_S else 0
            state.bucket, state.bucket_start = 0, now
        state.bucket += 1
        return self._from_credit(tenant, state, limits, now) if state.blocks else None

    def _from_credit(self, tenant: str, state: TenantCredit, limits: TenantLimits, now: float) -> str | None:
        if limits is not state.limits:
            if limits != state.limits:  # changed live: the credit was granted under other limits
                self._drop(tenant, state)
                return None
            state.limits = limits
        blocks = state.blocks
        while blocks:
            block = blocks[0]
            if now >= block.expires or (
                block.tokens_share is not None and state.settled - block.tokens_mark >= block.tokens_share
            ):
                state.give_back(blocks.popleft())
                self._mark(tenant, urgent=not blocks)
                continue
            member = f"{block.credit_id}.{block.next}"
            if now - block.granted_at > RESTAMP_AFTER_S:
                state.restamps.append((member, block.redis_ms + (now - block.granted_at) * 1000))
                self._mark(tenant, urgent=False)
            if block.next == block.last:
                blocks.popleft()
            else:
                block.next += 1
            self.local += 1
            if state.asking is None and now >= state.quiet_until:
                self._top_up(tenant, state, limits, now)
            return member
        self._holding.discard(tenant)
        return None

    async def acquire(self, tenant: str, limits: TenantLimits) -> tuple[str, Rejection | None]:
        """Ask the store for one admission (and, far from the limits, for credit); the request's
        id in the store and the refusal, if refused. QuotaUnavailable when the store does not answer.
        While credit is on its way, waits for it instead (no longer than asking would take)."""
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantCredit()
        if state.asking is not None:
            await asyncio.wait([state.asking])  # (not cancelled with this request)
            member = self._from_credit(tenant, state, limits, time.monotonic()) if state.blocks else None
            if member is not None:
                return member, None
        request_id = self.store.new_id()
        credit = 0 if state.asking is not None else self._wanted(state, limits, time.monotonic())
        self.asked += 1
        reply = self._call(tenant, state, limits, request_id, credit, self.store.timeout_s)
        result = self.store.reply(await reply, tenant, limits)
        return request_id, result.rejection

    def settle(self, tenant: str, request_id: str, tokens: int) -> None:
        """A request admitted by `take` or `acquire` ended having used `tokens`: sent with the
        tenant's next bookkeeping (at once when it holds no credit)."""
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantCredit()
        state.settled += tokens
        state.settled_requests += 1
        state.settles.append((request_id, int(tokens)))
        self._mark(tenant, urgent=not state.blocks and state.asking is None)

    # ---- credit ----------------------------------------------------------------------------

    def _wanted(self, state: TenantCredit, limits: TenantLimits, now: float) -> int:
        """Credit to ask for once what is held (counting only credit that lapses no sooner than
        LEAD_S or RTT_LEADS round trips) would last less than HORIZON_S (or those round trips) at
        the tenant's recent rate here: enough for that and HORIZON_S more (at least START_CREDIT
        when none is held), less what is held, within MAX_CREDIT and `credit_cap`; 0 below
        MIN_CREDIT (or without `gateways`)."""
        if self.gateways is None:
            return 0
        target = min(MAX_CREDIT, max(state.previous, state.bucket))
        if target < MIN_CREDIT:
            return 0
        lead = RTT_LEADS * self.rtt_s
        lapse = now + min(max(LEAD_S, lead), self.ttl_s / 2)
        held = usable = 0
        for block in state.blocks:
            count = block.last - block.next + 1
            held += count
            usable += count if block.expires > lapse else 0
        low = max(target, math.ceil(target * lead / HORIZON_S))  # HORIZON_S, or `lead`, at its rate
        if usable > low:
            return 0
        wanted = min(MAX_CREDIT, low + target if held else max(low + target, START_CREDIT)) - usable
        per_request = state.settled / state.settled_requests if state.settled_requests else None
        cap = credit_cap(limits, self.gateways, per_request)
        return max(0, wanted if cap is None else min(wanted, cap - held))

    def _top_up(self, tenant: str, state: TenantCredit, limits: TenantLimits, now: float) -> None:
        credit = self._wanted(state, limits, now)
        if credit > 0:
            self._call(tenant, state, limits, "", credit, SETTLE_TIMEOUT_S)

    def _call(self, tenant: str, state: TenantCredit, limits: TenantLimits | None, request_id: str, credit: int,
              timeout_s: float) -> asyncio.Future:  # fmt: skip
        """One script call for `tenant`, carrying its pending bookkeeping; the reply's credit is
        taken into `state` (and, if the call fails, its bookkeeping is tried again and the
        credit it may have reserved handed back)."""
        settles, restamps, returns, attempt = state.drain()
        credit_id = f"{self._prefix}.{next(self._ids)}" if credit else ""
        held = sum(b.last - b.next + 1 for b in state.blocks) if credit else 0
        reply = self.store.call(
            tenant, limits, request_id, credit=credit, gateways=self.gateways or 1, held=held, credit_id=credit_id,
            settles=settles, restamps=restamps, returns=returns, timeout_s=timeout_s,
        )  # fmt: skip
        if credit:
            state.asking = reply
        self._calls.add(reply)
        reply.add_done_callback(self._calls.discard)
        asked_at = time.monotonic()
        reply.add_done_callback(functools.partial(
            self._answered, tenant, state, limits, request_id, credit, credit_id, asked_at, state.settled,
            (settles, restamps, returns, attempt),
        ))  # fmt: skip
        return reply

    def _answered(self, tenant, state, limits, request_id, credit, credit_id, asked_at, mark, batch, reply) -> None:
        if credit:
            state.asking = None
        failed = reply.cancelled() or reply.exception() is not None
        if failed:
            if not request_id:  # an admission's failure is logged by its caller
                logger.warning("quota bookkeeping of %s failed: %s", tenant,
                               "cancelled" if reply.cancelled() else reply.exception())
            state.quiet_until = time.monotonic() + QUIET_S
            settles, restamps, returns, attempt = batch
            if credit:  # it may have run: hand back whatever it reserved (idempotent)
                returns = returns + [f"{credit_id}.{n}" for n in range(1, credit + 1)]
            self._retry(tenant, (settles, restamps, returns, attempt))
            return
        if not credit:
            return
        self.rtt_s += 0.2 * (time.monotonic() - asked_at - self.rtt_s)
        result = self.store.reply(reply.result(), tenant, limits)
        if result.granted == 0:
            state.quiet_until = time.monotonic() + QUIET_S
            return
        now = time.monotonic()
        share = None if result.tokens_left is None else result.tokens_left / (self.gateways or 1)
        block = Block(credit_id, result.granted, now, result.now_ms, asked_at + self.ttl_s, share, mark)
        if state.limits is not limits and state.blocks:  # limits changed while asking
            self._drop(tenant, state)
        state.limits = limits
        state.blocks.append(block)
        self._holding.add(tenant)
        self._mark(tenant, urgent=False)  # keeps the timer running: the credit lapses in time

    def _drop(self, tenant: str, state: TenantCredit) -> None:
        while state.blocks:
            state.give_back(state.blocks.popleft())
        self._holding.discard(tenant)
        self._mark(tenant, urgent=True)

    # ---- bookkeeping -----------------------------------------------------------------------

    def _mark(self, tenant: str, urgent: bool) -> None:
        self._dirty.add(tenant)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a ticket collected at shutdown: nothing left to send with
            logger.warning("quota bookkeeping of %s not sent: no event loop", tenant)
            return
        if urgent:
            self._urgent.add(tenant)
            if not self._soon:
                self._soon = True
                loop.call_soon(self._send_urgent)
        if self._timer is None:
            self._timer = loop.call_later(FLUSH_S, self._flush)

    def _send_urgent(self) -> None:
        """The bookkeeping of tenants without credit, at once (as it was before credit)."""
        self._soon = False
        urgent, self._urgent = self._urgent, set()
        for tenant in urgent:
            self._send(tenant)

    def _send(self, tenant: str) -> None:
        self._dirty.discard(tenant)
        state = self._tenants[tenant]
        if state.settles or state.restamps or state.returns:
            self._call(tenant, state, None, "", 0, SETTLE_TIMEOUT_S)

    def _flush(self) -> None:
        """Credit past its time handed back; every pending bookkeeping sent, one call per tenant."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.monotonic()
        for tenant in list(self._holding):
            state = self._tenants[tenant]
            while state.blocks and state.blocks[0].expires <= now:
                state.give_back(state.blocks.popleft())
                self._dirty.add(tenant)
            if not state.blocks:
                self._holding.discard(tenant)
        for tenant in list(self._dirty):
            self._send(tenant)
        if self._holding:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self._flush)

    def _retry(self, tenant: str, batch: tuple) -> None:
        settles, restamps, returns, attempt = batch
        if not (settles or restamps or returns):
            return
        if attempt + 1 >= RETRIES:
            logger.warning("quota bookkeeping of %s failed %d times; dropped (%d settlements, %d credits "
                           "handed back: their leases lapse on their own)", tenant, RETRIES, len(settles), len(returns))  # fmt: skip
            return
        loop = asyncio.get_running_loop()
        loop.call_later(0.5 * (attempt + 1), self._requeue, tenant, settles, restamps, returns, attempt + 1)

    def _requeue(self, tenant: str, settles: list, restamps: list, returns: list, attempt: int) -> None:
        state = self._tenants[tenant]
        state.settles[:0], state.restamps[:0], state.returns[:0] = settles, restamps, returns
        state.attempt = max(state.attempt, attempt)
        self._mark(tenant, urgent=True)

    async def aclose(self) -> None:
        """Hand back all credit and send what is pending (then close the store yourself)."""
        for _ in range(RETRIES):  # again after calls still out (credit may arrive with them)
            for tenant in list(self._holding):
                self._drop(tenant, self._tenants[tenant])
            self._flush()
            if not self._calls:
                return
            await asyncio.wait(list(self._calls), timeout=SETTLE_TIMEOUT_S)
