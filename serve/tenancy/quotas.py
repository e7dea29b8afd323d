"""Per-tenant quotas over a sliding 60 s window: requests per minute, tokens per minute (prompt +
generated, settled after the response) and concurrent requests.

Pure bookkeeping with the clock passed in; `authority.QuotaAuthority` holds the one ledger of
the cluster. Sliding logs are hand-written because the limits must be exact (429s start at the
configured number), which token buckets with refill do not give.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from paliserve.spec import TenantLimits

WINDOW_S = 60.0
CONCURRENCY_RETRY_S = 1.0


@dataclass(frozen=True)
class Rejection:
    limit: str  # requests_per_min | tokens_per_min | max_concurrency
    message: str
    retry_after_s: float


@dataclass
class _TenantUsage:
    requests: deque = field(default_factory=deque)  # admission times
    tokens: deque = field(default_factory=deque)  # (settle time, tokens)
    token_sum: int = 0
    in_flight: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]


class QuotaLedger:
    def __init__(self, limits: dict[str, TenantLimits]):
        self.limits = limits
        self.usage = {name: _TenantUsage() for name in limits}

    def acquire(self, tenant: str, now: float) -> Rejection | None:
        """Admit one request (counting it) or say which limit it hits and when to retry."""
        limits, usage = self.limits[tenant], self.usage[tenant]
        usage.expire(now)
        if limits.max_concurrency is not None and usage.in_flight >= limits.max_concurrency:
            return Rejection(
                "max_concurrency",
                f"Tenant '{tenant}' is at its limit of {limits.max_concurrency} concurrent requests (max_concurrency).",
                CONCURRENCY_RETRY_S,
            )
        if limits.requests_per_min is not None and len(usage.requests) >= limits.requests_per_min:
            return Rejection(
                "requests_per_min",
                f"Tenant '{tenant}' reached its limit of {limits.requests_per_min} requests per minute (requests_per_min).",
                usage.requests[0] + WINDOW_S - now,
            )
        if limits.tokens_per_min is not None and usage.token_sum >= limits.tokens_per_min:
            return Rejection(
                "tokens_per_min",
                f"Tenant '{tenant}' used {usage.token_sum} of its {limits.tokens_per_min} tokens per minute "
                f"(tokens_per_min).",
                self._tokens_free_at(usage, limits.tokens_per_min) - now,
            )
        usage.requests.append(now)
        usage.in_flight += 1
        return None

    def settle(self, tenant: str, tokens: int, now: float) -> None:
        """A request admitted by `acquire` has ended having used `tokens` (0 if it failed early)."""
        usage = self.usage[tenant]
        usage.in_flight = max(0, usage.in_flight - 1)
        if tokens > 0:
            usage.tokens.append((now, tokens))
            usage.token_sum += tokens
        usage.expire(now)

    @staticmethod
    def _tokens_free_at(usage: _TenantUsage, limit: int) -> float:
        """When enough settled tokens leave the window for the sum to drop below the limit."""
        remaining = usage.token_sum
        for settled_at, tokens in usage.tokens:
            remaining -= tokens
            if remaining < limit:
                return settled_at + WINDOW_S
        return usage.tokens[-1][0] + WINDOW_S if usage.tokens else 0.0
