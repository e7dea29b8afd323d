"""The planner-vs-vLLM-vs-measured table that benchmarks/gpu_check.py and benchmarks/real_size.py
print: one row per figure, its error against what was seen (the measured figure, else vLLM's)
and whether it is within its target."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar


def error(predicted: float | None, actual: float | None) -> float | None:
    """Relative error of `predicted` against `actual` (positive: the planner says more)."""
    if predicted is None or actual is None or actual == 0:
        return None
    return predicted / actual - 1


@dataclass(frozen=True)
class Row:
    what: str
    planner: float | None
    vllm: float | None = None
    measured: float | None = None
    target: float | None = None  # largest |error| allowed against the measured figure, else vLLM's
    unit: str = ""
    fmt: str | None = None  # of the three figures; default: "1,234" from 1,000 up, else 4 significant digits

    @property
    def reference(self) -> float | None:
        """What the planner's figure is held against: the measured figure, else vLLM's."""
        return self.measured if self.measured is not None else self.vllm

    @property
    def err(self) -> float | None:
        return error(self.planner, self.reference)

    @property
    def verdict(self) -> str:
        if self.target is None or self.err is None:
            return ""
        return "met" if abs(self.err) <= self.target else "NOT met"

    @property
    def label(self) -> str:
        return self.what + (f" ({self.unit})" if self.unit else "")

    def cell(self, value: float | None) -> str:
        if value is None:
            return "-"
        if self.fmt is not None:
            return self.fmt.format(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


HEADER = ("figure", "planner", "vLLM", "measured", "error", "target", "")


def render(rows: list[Row]) -> str:
    """An aligned text table, one line per row and a rule under the header."""
    table = [HEADER] + [
        (r.label, r.cell(r.planner), r.cell(r.vllm), r.cell(r.measured), "-" if r.err is None else f"{r.err:+.1%}",
         "" if r.target is None else f"±{r.target:.0%}", r.verdict)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def missed(rows: list[Row]) -> list[str]:
    """The rows whose target is not met."""
    return [r.label for r in rows if r.verdict == "NOT met"]


class Timed(Protocol):
    started: float  # when the request was sent
    ended: float  # when its reply ended
    client: int  # the closed loop's client that sent it
    index: int  # that client's n-th request (0: its first)


T = TypeVar("T", bound=Timed)


def steady_state(samples: list[T], concurrency: int) -> tuple[list[T], str]:
    """The requests of a closed loop (each client sends its next request when its previous reply
    ends) sent while all `concurrency` clients had one in flight: the state autoscale/performance.py
    models at batch = concurrency (each request's decode shares its steps with the others' decodes
    and, once each, with the prefill of the request that replaces each of them). Kept: a request
    that is not its client's first, was sent once every client had sent its first, and ended before
    any client's last request ended (after that fewer are in flight). With one client every request
    is kept. Returns the kept samples and a sentence saying which were left out."""
    if concurrency <= 1:
        return list(samples), "none (one client)"
    clients = {s.client for s in samples}
    all_started = max(min(s.started for s in samples if s.client == c) for c in clients)
    first_done = min(max(s.ended for s in samples if s.client == c) for c in clients)
    kept = [s for s in samples if s.index > 0 and s.started >= all_started and s.ended <= first_done + 1e-9]
    firsts = sum(1 for s in samples if s.index == 0)
    tail = len(samples) - firsts - len(kept)
    return kept, (f"{len(samples) - len(kept)} of {len(samples)}: each client's first request ({firsts}, the ramp-up) "
                  f"and {tail} sent before all clients had started or ended after the first client's last (the ramp-down)")


def run_clients(count: int, client_loop: Callable[[int], None]) -> None:
    """Run `client_loop(k)` for k in 0..count-1, each in a thread of its own, and raise once all
    have ended if any of them raised."""
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            client_loop(k)
        except BaseException as exc:  # reported below, after the other clients finish
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,), daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {count} clients failed: {errors[0]!r}")
