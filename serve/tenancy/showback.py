"""Engine time apportioned to tenants by tokens (usage showback).

An engine replica is busy while it holds at least one request; in that time it computes every
request it holds at once (continuous batching), so a request's own duration says little about
the engine time it used. `EngineClock` splits the replica's busy time among the requests that
finished in it, in proportion to their tokens (prompt + generated): busy time accrues until
requests finish, and at each settlement (when the replica goes idle, else at most every
`settle_every_s` while it stays busy) the time accrued since the last one is divided among the
requests finished since then by their share of those requests' tokens. The shares of all tenants
therefore add up to the replica's busy time; idle time is charged to no one (`paliserve usage`
shows it apart). Busy time that ends with no tokens (requests refused by the engine) carries
over to the next requests that finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class EngineClock:
    def __init__(
        self,
        record: Callable[[tuple[str, str], float], None],
        now: Callable[[], float] = time.monotonic,
        settle_every_s: float = 1.0,
    ):
        self._record = record  # (tenant, model) -> engine seconds
        self._now = now
        self._settle_every_s = settle_every_s
        self.running = 0
        self._busy_since: float | None = None
        self._accrued_s = 0.0  # busy time not yet apportioned
        self._pending: dict[tuple[str, str], int] = {}
        self._pending_tokens = 0
        self._settled_at = now()

    def start(self) -> None:
        if self.running == 0:
            self._busy_since = self._now()
        self.running += 1

    def finish(self, key: tuple[str, str], tokens: int) -> None:
        now = self._now()
        self.running -= 1
        if self.running == 0 and self._busy_since is not None:
            self._accrued_s += now - self._busy_since
            self._busy_since = None
        if tokens > 0:
            self._pending[key] = self._pending.get(key, 0) + tokens
            self._pending_tokens += tokens
        if self.running == 0 or now - self._settled_at >= self._settle_every_s:
            self.settle(now)

    def settle(self, now: float | None = None) -> None:
        """Apportion the busy time accrued so far among the requests finished since the last call."""
        now = self._now() if now is None else now
        if not self._pending_tokens:
            return  # nothing finished: the time waits for the next tokens
        busy = self._accrued_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        for key, tokens in self._pending.items():
            self._record(key, busy * tokens / self._pending_tokens)
        self._accrued_s = 0.0
        if self._busy_since is not None:
            self._busy_since = now
        self._pending, self._pending_tokens, self._settled_at = {}, 0, now
