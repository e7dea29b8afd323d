"""Closed-loop overload: N clients stream chat completions back to back for a bounded time and
count what became of every request (served, refused with Retry-After, failed, hung).

Not Locust: this answers one question about every single request (was it answered, and how),
and runs inside a test process or a benchmark without a subprocess.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from .images import png_data_url
from .latency import percentile
from .sse import StreamError

REFUSALS = (429, 503)


@dataclass
class OverloadResult:
    concurrency: int
    duration_s: float
    statuses: Counter = field(default_factory=Counter)
    ttft_s: list[float] = field(default_factory=list)  # requests served (200, complete stream)
    refusal_s: list[float] = field(default_factory=list)  # time to a 429/503
    refusals_without_retry_after: int = 0
    broken_streams: int = 0  # 200 whose stream ended in an error or without [DONE]
    hung: int = 0  # no answer within the client's timeout
    errors: Counter = field(default_factory=Counter)  # transport errors by type

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + self.hung + sum(self.errors.values())

    @property
    def served(self) -> int:
        return len(self.ttft_s)

    @property
    def refused(self) -> int:
        return sum(self.statuses[s] for s in REFUSALS)

    @property
    def lost(self) -> int:
        """Requests neither served nor cleanly refused."""
        return self.sent - self.served - self.refused + self.refusals_without_retry_after

    def row(self) -> dict:
        return {
            "concurrency": self.concurrency, "sent": self.sent, "served": self.served, "refused": self.refused,
            "refusal_rate": self.refused / self.sent if self.sent else 0.0,
            "p95_ttft_ms": percentile(self.ttft_s, 95) * 1000, "p95_refusal_ms": percentile(self.refusal_s, 95) * 1000,
            "lost": self.lost, "hung": self.hung, "statuses": dict(self.statuses),
        }  # fmt: skip


async def _one(client: httpx.AsyncClient, url: str, body: dict, headers: dict, result: OverloadResult) -> None:
    started = time.monotonic()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as reply:
            result.statuses[reply.status_code] += 1
            if reply.status_code in REFUSALS:
                result.refusal_s.append(time.monotonic() - started)
                result.refusals_without_retry_after += "retry-after" not in reply.headers
                await reply.aread()
                return
            if reply.status_code != 200:
                await reply.aread()
                return
            first, done = None, False
            async for line in reply.aiter_lines():
                if not line.startswith("data:"):
                    continue
                if line == "data: [DONE]":
                    done = True
                elif '"error"' in line:
                    raise StreamError(line)
                elif first is None:
                    first = time.monotonic() - started
            if not done or first is None:
                raise StreamError("stream ended before [DONE]")
            result.ttft_s.append(first)
    except StreamError:
        result.broken_streams += 1
    except httpx.TimeoutException:
        result.hung += 1
    except httpx.HTTPError as exc:
        result.errors[type(exc).__name__] += 1


async def _drive(url: str, key: str | None, model: str, concurrency: int, duration_s: float, max_requests: int,
                 max_tokens: int, timeout_s: float) -> OverloadResult:  # fmt: skip
    result = OverloadResult(concurrency, duration_s)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    image = png_data_url(28, seed=0)
    body = {
        "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "caption en"},
                                                  {"type": "image_url", "image_url": {"url": image}}]}],
    }  # fmt: skip
    deadline, budget = time.monotonic() + duration_s, [max_requests]

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            await _one(client, f"{url}/v1/chat/completions", body, headers, result)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return result


def overload(url: str, key: str | None, model: str, concurrency: int, duration_s: float = 20.0,
             max_requests: int = 2000, max_tokens: int = 16, timeout_s: float = 60.0) -> OverloadResult:  # fmt: skip
    """Run `concurrency` closed-loop streaming clients against `url` for `duration_s` (and at
    most `max_requests` requests in all); every request has a `timeout_s` client timeout."""
    return asyncio.run(_drive(url, key, model, concurrency, duration_s, max_requests, max_tokens, timeout_s))
