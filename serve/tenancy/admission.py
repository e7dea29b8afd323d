"""The gateway's admission path: authenticate, authorize the target, take a quota (from local
credit or the cluster's quota store) and a fair-queue slot, and, when the request ends, settle
tokens and record metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from paliserve.spec import AdapterPlan, TenantPlan
from serve.errors import APIError, Overloaded, RateLimited, retry_after
from serve.tenancy.access import Catalog, Target
from serve.tenancy.credit import QuotaCredit
from serve.tenancy.fairness import FairGate
from serve.tenancy.fairshare import SharedCounters
from serve.tenancy.identity import TenantDirectory
from serve.tenancy.metrics import TenantMetrics
from serve.tenancy.quotas import QuotaStore, QuotaUnavailable

logger = logging.getLogger("paliserve.tenancy")
OPEN_WEIGHT = 1.0
UNKNOWN_MODEL = "unknown"  # metric label for model names that are not served


@dataclass
class TenancyConfig:
    """What `build_app` hands the gateway (plain data: it crosses into the replica)."""

    tenants: list[dict] = field(default_factory=list)
    adapters: dict[str, list[dict]] = field(default_factory=dict)  # model -> adapters
    capacity: dict[str, int] = field(default_factory=dict)  # model -> requests the engines take at once
    # ingress replicas sharing the quota store, at most (local credit is sized by it); None: no
    # local credit, every admission of a limited tenant asks the store
    gateways: int | None = None


@dataclass
class Ticket:
    """One admitted request: its quota and its engine slot, returned exactly once by `finish`."""

    tenancy: Tenancy
    tenant: TenantPlan | None
    target: Target
    estimate: int
    received: float
    queued: float | None = None  # entered the fair gate
    admitted: float | None = None  # left it with a slot
    first_token: float | None = None
    done: bool = False
    quota_id: str | None = None  # the request's entry in the quota store (limited tenants)

    @property
    def tags(self) -> dict[str, str]:
        return TenantMetrics.tags(self.tenant and self.tenant.name, self.target.name)

    def first_token_seen(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()
            if self.admitted is not None:  # the gate learns all the time to a first token but its own wait
                waited = self.admitted - self.queued
                self.tenancy.gates[self.target.model].first_token(self.first_token - self.received - waited)
            self.tenancy.metrics.ttft.observe(self.first_token - self.received, tags=self.tags)

    def __del__(self):
        # A stream whose client left before the body started is never iterated, so its
        # `finally` never runs: the slot and the quota come back when the ticket is collected.
        if not self.done:
            self.finish(499)

    def finish(self, status: int, prompt_tokens: int = 0, completion_tokens: int = 0, image_tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        self.tenancy.release(self, prompt_tokens + completion_tokens)
        m, tags = self.tenancy.metrics, self.tags
        m.requests.inc(tags={**tags, "status": str(status)})
        if status != 200:
            return
        now = time.monotonic()
        m.prompt_tokens.inc(prompt_tokens, tags=tags)
        if completion_tokens:
            m.generation_tokens.inc(completion_tokens, tags=tags)
        if image_tokens:
            m.image_tokens.inc(image_tokens, tags=tags)
        m.e2e.observe(now - self.received, tags=tags)
        if self.first_token is not None and completion_tokens > 1:
            m.tpot.observe((now - self.first_token) / (completion_tokens - 1), tags=tags)


class Tenancy:
    def __init__(self, config: TenancyConfig, quotas: QuotaStore | None = None):
        tenants = [TenantPlan.model_validate(t) for t in config.tenants]
        self.directory = TenantDirectory(tenants)
        adapters = {m: [AdapterPlan.model_validate(a) for a in v] for m, v in config.adapters.items()}
        self.catalog = Catalog(list(config.capacity), adapters)
        self.gates = {model: FairGate(capacity) for model, capacity in config.capacity.items()}
        self.quotas = quotas  # None: no store configured (limited tenants then get 503)
        self.credit = QuotaCredit(quotas, config.gateways) if quotas is not None else None
        self.metrics = TenantMetrics()
        self._in_flight: dict[tuple, int] = {}
        self._sharing: asyncio.Task | None = None  # fair-share counters shared through the store

    def update_tenants(self, tenants: list[TenantPlan]) -> None:
        """Serve `tenants` from the next request on (live changes: serve/tenancy/registry.py).
        A new directory and catalog, swapped in one assignment each; the fair gates, in-flight
        counts and metrics stay, and admitted tickets keep the TenantPlan they were admitted with."""
        directory = TenantDirectory(tenants)
        catalog = Catalog(self.catalog.models, {m: list(a.values()) for m, a in self.catalog.adapters.items()})
        self.directory, self.catalog = directory, catalog

    @staticmethod
    def limited(tenant: TenantPlan | None) -> bool:
        return tenant is not None and any(v is not None for v in tenant.limits.model_dump().values())

    def authenticate(self, authorization: str | None, client_host: str | None) -> TenantPlan | None:
        try:
            return self.directory.authenticate(authorization, client_host)
        except APIError:
            self.metrics.rejections.inc(tags={"tenant": "unauthenticated", "model": "", "reason": "unauthenticated"})
            raise

    def resolve(self, requested: str | None, tenant: TenantPlan | None) -> Target:
        try:
            return self.catalog.resolve(requested, tenant)
        except APIError as exc:
            # a refused name exists (bounded label values); an unknown one is the client's text
            forbidden = exc.status_code == 403
            model = (requested or "") if forbidden else UNKNOWN_MODEL
            self.reject(tenant, model, "forbidden" if forbidden else "unknown_model", exc.status_code)
            raise

    def reject(self, tenant: TenantPlan | None, model: str, reason: str, status: int) -> None:
        tags = TenantMetrics.tags(tenant and tenant.name, model)
        self.metrics.rejections.inc(tags={**tags, "reason": reason})
        self.metrics.requests.inc(tags={**tags, "status": str(status)})

    async def admit(self, tenant: TenantPlan | None, target: Target, estimate: int, received: float | None = None) -> Ticket:
        """Quota first (cheap refusals never wait), then a fair slot at the engines. `received`:
        when the request reached the replica (default: now)."""
        received = received if received is not None else time.monotonic()
        if self._sharing is None and self.quotas is not None:  # started in the replica's event loop
            self._sharing = asyncio.get_running_loop().create_task(SharedCounters(self.quotas.redis, self.gates).run())
        quota_id = await self._take_quota(tenant, target) if self.limited(tenant) else None
        ticket = Ticket(self, tenant, target, estimate, received, quota_id=quota_id)
        gate, tags = self.gates[target.model], ticket.tags
        name, weight = self._fair_identity(tenant)
        self._count(tags, +1)
        if gate.running >= gate.capacity or gate.vtc.waiting():
            self.metrics.queue_depth.set(gate.vtc.waiting(name) + 1, tags=tags)
        try:
            ticket.queued = time.monotonic()
            await gate.admit(name, weight, estimate, self._ttft_slo_s(tenant))
            ticket.admitted = time.monotonic()
        except BaseException as exc:
            self._count(tags, -1)
            if quota_id is not None:
                self.credit.settle(tenant.name, quota_id, 0)
            if isinstance(exc, APIError):
                self.reject(tenant, target.name, "overloaded", exc.status_code)
            raise
        finally:
            self.metrics.queue_depth.set(gate.vtc.waiting(name), tags=tags)
        return ticket

    async def _take_quota(self, tenant: TenantPlan, target: Target) -> str:
        """From the tenant's local credit, or one atomic script in the quota store, with the
        tenant's limits as they are now; the request's id in the store, to settle it with."""
        if self.credit is not None:
            quota_id = self.credit.take(tenant.name, tenant.limits)
            if quota_id is not None:
                return quota_id
        try:
            if self.credit is None:
                raise QuotaUnavailable("no quota store configured")
            quota_id, rejection = await self.credit.acquire(tenant.name, tenant.limits)
        except QuotaUnavailable as exc:  # fail closed: without the store no limit can be checked
            logger.warning("quota store unavailable: %s", exc)
            self.reject(tenant, target.name, "quota_authority_unavailable", 503)
            raise Overloaded(
                "The quota service is unavailable; retry shortly.", code="quota_unavailable", headers=retry_after(1)
            ) from None
        if rejection is not None:
            self.reject(tenant, target.name, rejection.limit, 429)
            raise RateLimited(rejection.message, code=rejection.limit, headers=retry_after(rejection.retry_after_s))
        return quota_id

    def release(self, ticket: Ticket, tokens: int) -> None:
        name, weight = self._fair_identity(ticket.tenant)
        held = time.monotonic() - ticket.admitted if ticket.admitted is not None else None
        self.gates[ticket.target.model].release(name, weight, ticket.estimate, tokens, held)
        self._count(ticket.tags, -1)
        if ticket.quota_id is not None:  # sent in the background; a lease never settled lapses on its own
            self.credit.settle(ticket.tenant.name, ticket.quota_id, tokens)

    @staticmethod
    def _ttft_slo_s(tenant: TenantPlan | None) -> float | None:
        return tenant.slo.ttft_p95_ms / 1000 if tenant is not None and tenant.slo is not None else None

    @staticmethod
    def _fair_identity(tenant: TenantPlan | None) -> tuple[str, float]:
        return (tenant.name, tenant.weight) if tenant is not None else ("", OPEN_WEIGHT)

    def _count(self, tags: dict, delta: int) -> None:
        key = (tags["tenant"], tags["model"])
        self._in_flight[key] = self._in_flight.get(key, 0) + delta
        self.metrics.in_flight.set(self._in_flight[key], tags=tags)

    def models_for(self, tenant: TenantPlan | None) -> list[str]:
        return [t.name for t in self.catalog.visible_to(tenant)]
