"""Calibration profiles: measured prefill and decode-step times of one model on one accelerator,
and optionally the whole serving path measured through the HTTP endpoint.

`paliserve profile` writes the engine's points (see autoscale/profiler.py) and `paliserve
profile-endpoint` adds the serving points; the planner reads them instead of datasheet
efficiencies when the model and accelerator match.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, model_validator

from paliserve.spec import StrictModel


class PrefillPoint(StrictModel):
    text_tokens: int = Field(ge=0, description="Prompt tokens besides the image.")
    seconds: float = Field(gt=0, description="Time to first token at batch 1 (vision + prefill).")


class DecodePoint(StrictModel):
    batch: int = Field(ge=1)
    step_seconds: float = Field(gt=0, description="Mean time between tokens at this batch size.")


class ServingPoint(StrictModel):
    """The whole serving path at one concurrency, measured through the HTTP endpoint by the load
    test's own streaming client (closed loop, one replica): what a client waits for."""

    concurrency: int = Field(ge=1, description="Requests kept in flight against one replica.")
    ttft_mean_seconds: float = Field(gt=0)
    ttft_p95_seconds: float = Field(gt=0)
    tpot_mean_seconds: float = Field(gt=0)
    requests_per_second: float = Field(ge=0)
    output_tokens_per_second: float = Field(ge=0)
    requests: int = Field(ge=1, description="Requests the figures are over.")
    failures: int = Field(default=0, ge=0)


class ServingWorkload(StrictModel):
    """The requests the serving points were measured with (the planner compares like with like)."""

    endpoint: str = ""
    prompt_tokens_mean: float = Field(ge=0)
    prompt_tokens_p95: float = Field(ge=0)
    output_tokens_mean: float = Field(ge=1)
    seconds_per_point: float = Field(gt=0)
    passes: int = Field(default=1, ge=1, description="Sweeps over the concurrencies each point combines.")
    measured_at: str = ""


class Profile(StrictModel):
    version: int = 1
    model: str = Field(description="Spec model name the profile applies to.")
    checkpoint: str = ""
    accelerator: str = Field(description="Catalog accelerator name it was measured on (e.g. cpu, L4).")
    tensor_parallel_size: int = Field(default=1, ge=1)
    dtype: str = "auto"
    image_tokens: int = Field(default=0, ge=0)
    context_tokens: int = Field(default=0, ge=0, description="Mean sequence length during decode points.")
    prefill: list[PrefillPoint] = Field(min_length=1)
    decode: list[DecodePoint] = Field(min_length=1)
    measured_at: str = ""
    notes: str = ""
    serving: list[ServingPoint] = Field(
        default_factory=list,
        description="Through the endpoint (`paliserve profile-endpoint`); empty: the engine alone.",
    )
    serving_workload: ServingWorkload | None = None

    @model_validator(mode="after")
    def _sorted(self) -> Profile:
        self.prefill.sort(key=lambda p: p.text_tokens)
        self.decode.sort(key=lambda p: p.batch)
        self.serving.sort(key=lambda p: p.concurrency)
        if self.serving and self.serving_workload is None:
            raise ValueError("serving points need serving_workload (the requests they were measured with)")
        return self

    def prefill_seconds(self, text_tokens: float) -> float:
        return interpolate([(p.text_tokens, p.seconds) for p in self.prefill], text_tokens)

    def decode_step_seconds(self, batch: float) -> float:
        return interpolate([(p.batch, p.step_seconds) for p in self.decode], batch)

    def label(self, path: str | None = None) -> str:
        where = f" ({path})" if path else ""
        return f"profile {self.model} on {self.accelerator}{where}, measured {self.measured_at or 'n/a'}"


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through the points, extended along the end segments; never below zero."""
    if len(points) == 1:
        return points[0][1]
    if x <= points[0][0]:
        (x0, y0), (x1, y1) = points[0], points[1]
    elif x >= points[-1][0]:
        (x0, y0), (x1, y1) = points[-2], points[-1]
    else:
        i = next(i for i in range(1, len(points)) if points[i][0] >= x)
        (x0, y0), (x1, y1) = points[i - 1], points[i]
    if x1 == x0:
        return max(y0, y1)
    slope = max(0.0, (y1 - y0) / (x1 - x0))  # time never falls as work grows
    return max(1e-9, y0 + slope * (x - x0))


def through(points: list[tuple[float, float]], x: float) -> float:
    """Linear through the points (exact at each), flat before the first, along the last segment
    after the last while it rises (flat if it falls)."""
    if len(points) == 1 or x <= points[0][0]:
        return points[0][1]
    i = next((i for i in range(1, len(points)) if points[i][0] >= x), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
    if x > x1:
        slope = max(slope, 0.0)
    return y0 + slope * (x - x0)


def load_profile(path: str | Path) -> Profile:
    return Profile.model_validate(yaml.safe_load(Path(path).read_text()))


def save_profile(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False))
