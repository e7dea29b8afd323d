"""autoscale.profiler.decode_step_seconds: a batch started together is timed from the moment every
request has its first token, so one request's decode gaps do not hold another's prefill."""

from __future__ import annotations

import pytest

from autoscale.profiler import decode_step_seconds


def tokens(first: float, step: float, n: int, stall_at: float | None = None, stall: float = 0.0) -> list[float]:
    """Arrival times of n tokens, one per `step` after `first`, delayed by `stall` from `stall_at` on."""
    out, t = [], first
    for _ in range(n):
        if stall_at is not None and t >= stall_at:
            t, stall_at = t + stall, None
        out.append(t)
        t += step
    return out


def test_a_batch_in_lockstep_gives_its_step():
    runs = [tokens(1.0, 0.3, 32), tokens(1.0, 0.3, 32)]
    assert decode_step_seconds(runs) == pytest.approx(0.3)


def test_another_requests_prefill_is_not_a_decode_step():
    """Request A's prefill ends at 1 s and it decodes; B's prefill stalls A's decode for 1 s and B's
    first token comes at 2.3 s. Counted from A's first token, A's gaps would say 0.33 s a step."""
    a = tokens(1.0, 0.3, 32, stall_at=1.25, stall=1.0)
    b = tokens(2.3 + 0.3, 0.3, 32)
    assert (a[-1] - a[0]) / 31 == pytest.approx(0.3 + 1.0 / 31)
    assert decode_step_seconds([a, b]) == pytest.approx(0.3)


def test_a_batch_without_two_tokens_after_it_settles_is_refused():
    with pytest.raises(ValueError):
        decode_step_seconds([[1.0], [2.0]])
