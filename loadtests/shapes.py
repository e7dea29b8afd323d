"""Load shapes as schedules of stages: pure data, driven by a Locust `LoadTestShape` in the
locustfile. A stage's `level` multiplies the plan's target load (1.0 = the target); only
stages labelled `target` decide whether a tenant meets its SLO.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("steady", "step", "spike", "ramp")
TARGET = "target"
SPIKE_OVER_PEAK = 2.0  # a spike doubles the plan's peak load
RAMP_STEPS = 5


@dataclass(frozen=True)
class Stage:
    until_s: float  # end of the stage, seconds since the test started
    level: float
    label: str


@dataclass(frozen=True)
class Schedule:
    stages: tuple[Stage, ...]

    @property
    def duration_s(self) -> float:
        return self.stages[-1].until_s

    def at(self, t: float) -> Stage | None:
        """The stage running at t seconds, None once the schedule is over."""
        return next((s for s in self.stages if t < s.until_s), None)

    def target_windows(self) -> list[tuple[float, float]]:
        """(start, end) of each stage at the target load."""
        windows, start = [], 0.0
        for stage in self.stages:
            if stage.label == TARGET:
                windows.append((start, stage.until_s))
            start = stage.until_s
        return windows


def schedule(shape: str, duration_s: float, peak_ratio: float = 1.0) -> Schedule:
    """The stages of `shape` over `duration_s`; `peak_ratio` is the plan's peak over its target."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    peak = max(peak_ratio, 1.0)
    d = float(duration_s)
    if shape == "steady":
        stages = [Stage(d, 1.0, TARGET)]
    elif shape == "step":
        stages = [Stage(d / 2, 1.0, TARGET), Stage(d, peak, "peak")]
    elif shape == "spike":
        stages = [
            Stage(0.4 * d, 1.0, TARGET),
            Stage(0.6 * d, peak * SPIKE_OVER_PEAK, "spike"),
            Stage(d, 1.0, TARGET),
        ]
    else:
        stages = _ramp(d, peak)
    return Schedule(tuple(stages))


def _ramp(d: float, peak: float) -> list[Stage]:
    """Equal steps from a fifth of the peak up to the peak, with the target as one of them."""
    levels = sorted({round(peak * k / RAMP_STEPS, 6) for k in range(1, RAMP_STEPS + 1)} | {1.0})
    step = d / len(levels)
    return [
        Stage(step * (i + 1) if i < len(levels) - 1 else d, level, TARGET if level == 1.0 else "ramp")
        for i, level in enumerate(levels)
    ]


def users_at(level: float, concurrency: int) -> int:
    """Closed-loop users for one tenant at a load level (at least one while the level is positive)."""
    return max(1, round(concurrency * level)) if level > 0 else 0
