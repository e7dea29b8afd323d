"""Per-request latency as vLLM's benchmark (`vllm/benchmarks/serve.py`) defines it.

- TTFT: send to the first streamed chunk carrying a choice.
- ITL: gap between consecutive chunks carrying a choice (one per gap, all kept).
- E2E: send to the last chunk carrying a choice (the usage chunk carries no token).
- TPOT: (E2E - TTFT) / (output tokens - 1), only for requests with more than one token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Timeline:
    """What one streamed request saw, in seconds since it was sent."""

    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int | None = None  # from the usage chunk
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class RequestLatency:
    ttft_s: float
    e2e_s: float
    itl_s: tuple[float, ...]
    tpot_s: float | None  # None when fewer than two tokens came back
    output_tokens: int


def measure(timeline: Timeline) -> RequestLatency | None:
    """The request's latencies, or None when no token chunk arrived (a failed request)."""
    times = timeline.chunk_times
    if not times:
        return None
    ttft, e2e = times[0], times[-1]
    tokens = timeline.output_tokens if timeline.output_tokens is not None else len(times)
    tpot = (e2e - ttft) / (tokens - 1) if tokens > 1 else None
    itl = tuple(b - a for a, b in zip(times, times[1:]))
    return RequestLatency(ttft_s=ttft, e2e_s=e2e, itl_s=itl, tpot_s=tpot, output_tokens=tokens)


def percentile(values: list[float], p: float) -> float:
    """numpy's default (linear) percentile, p in 0..100, as vLLM's benchmark reports; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
