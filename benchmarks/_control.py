"""A machine-speed control printed beside timings: this shared machine's speed was seen to move
by a third between minutes, so a figure without it cannot be compared with another."""

from __future__ import annotations

import statistics
import timeit


def machine_speed(runs: int = 5) -> float:
    """Seconds a fixed pure-Python loop takes (median of `runs`)."""
    return statistics.median(timeit.repeat("for i in range(2_500_000): total += i", "total = 0", number=1, repeat=runs))
