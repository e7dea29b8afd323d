"""The one quota authority of the cluster: a single-replica Serve deployment holding the ledger,
called by every gateway replica (so limits hold however many gateways run)."""

from __future__ import annotations

import time

from ray import serve

from paliserve.spec import TenantLimits
from serve.tenancy.quotas import QuotaLedger, Rejection


@serve.deployment(name="QuotaAuthority", num_replicas=1, max_ongoing_requests=10_000)
class QuotaAuthority:
    def __init__(self, limits: dict[str, dict]):
        self.ledger = QuotaLedger({name: TenantLimits.model_validate(v) for name, v in limits.items()})

    async def acquire(self, tenant: str) -> Rejection | None:
        return self.ledger.acquire(tenant, time.monotonic())

    async def settle(self, tenant: str, tokens: int) -> None:
        self.ledger.settle(tenant, tokens, time.monotonic())

    async def usage(self, tenant: str) -> dict:
        usage = self.ledger.usage[tenant]
        usage.expire(time.monotonic())
        return {"requests": len(usage.requests), "tokens": usage.token_sum, "in_flight": usage.in_flight}
