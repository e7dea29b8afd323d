"""The traffic a plan's tenants send, as plain data the Locust process reads from JSON.

`profile_from_plan` runs in the parent (it reads the pydantic plan); everything else here is
standard library only, for the gevent-patched Locust process.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .shapes import Schedule, schedule

if TYPE_CHECKING:
    from paliserve.spec import Plan

MODES = ("closed", "open")
PATCH_SIZE = 14  # PaliGemma's SigLIP patch: image tokens = (resolution / 14)^2
DEFAULT_RESOLUTION = 224
# Two-letter English words: one token each in Gemma's tokenizer and in the tiny model's.
WORDS = "an as at be by do go he if in is it me my no of on or so to up us we".split()
Z95 = 1.6448536269514722  # standard normal 95th percentile


@dataclass(frozen=True)
class TenantTraffic:
    name: str
    model: str
    deployment: str
    key: str | None
    concurrency: int
    peak_concurrency: int
    request_rate: float  # open loop: arrivals per second at the target load
    rate_source: str
    prompt_mean: float
    prompt_p95: float
    output_mean: float
    output_p95: float
    image_size: int
    slo_ttft_p95_ms: float
    slo_tpot_p95_ms: float
    predicted_ttft_p95_ms: float
    predicted_tpot_ms: float
    tokens_per_word: float = 1.0  # prompt tokens one word of WORDS costs (see calibrate.py)


@dataclass(frozen=True)
class TrafficProfile:
    tenants: tuple[TenantTraffic, ...]
    mode: str
    shape: str
    duration_s: float
    records_path: str
    seed: int = 0
    max_in_flight_per_tenant: int = 512  # open loop: arrivals beyond this fail as "overflow"
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def peak_ratio(self) -> float:
        return sum(t.peak_concurrency for t in self.tenants) / sum(t.concurrency for t in self.tenants)

    def schedule(self) -> Schedule:
        return schedule(self.shape, self.duration_s, self.peak_ratio)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrafficProfile:
        raw = json.loads(text)
        raw["tenants"] = tuple(TenantTraffic(**t) for t in raw["tenants"])
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path) -> TrafficProfile:
        return cls.from_json(Path(path).read_text())


class PlanError(ValueError):
    """The plan cannot drive a load test (no tenant workloads, missing keys, bad options)."""


def profile_from_plan(
    plan: Plan, keys: dict[str, str | None], mode: str, shape: str, duration_s: float, records_path: str, seed: int = 0
) -> TrafficProfile:
    if mode not in MODES:
        raise PlanError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    schedule(shape, duration_s)  # validates shape and duration
    deployments = {d.name: d for d in plan.deployments}
    tenants = []
    for t in plan.tenants:
        if t.workload is None or t.slo is None:
            continue
        deployment = deployments.get(t.deployment or "") or _deployment_for(plan, t.workload.model or t.models[0])
        w = t.workload
        rate, source = _request_rate(t, w)
        tenants.append(
            TenantTraffic(
                name=t.name,
                model=deployment.model_name,
                deployment=deployment.name,
                key=keys.get(t.name),
                concurrency=w.concurrency,
                peak_concurrency=w.peak,
                request_rate=rate,
                rate_source=source,
                prompt_mean=w.prompt_tokens.mean,
                prompt_p95=w.prompt_tokens.p95,
                output_mean=w.output_tokens.mean,
                output_p95=w.output_tokens.p95,
                image_size=w.image_resolution or _resolution(deployment.image_tokens),
                slo_ttft_p95_ms=t.slo.ttft_p95_ms,
                slo_tpot_p95_ms=t.slo.tpot_p95_ms,
                predicted_ttft_p95_ms=t.predicted_ttft_p95_ms,
                predicted_tpot_ms=t.predicted_tpot_ms,
            )
        )
    if not tenants:
        raise PlanError("the plan has no tenant with a workload and an SLO: nothing to load-test")
    used = {t.deployment for t in tenants}
    return TrafficProfile(
        tenants=tuple(tenants),
        mode=mode,
        shape=shape,
        duration_s=duration_s,
        records_path=records_path,
        seed=seed,
        deployments={
            d.name: {
                "model": d.model_name,
                "replicas_initial": d.replicas.initial,
                "replicas_max": d.replicas.max,
                **d.predicted.model_dump(),
            }
            for d in plan.deployments
            if d.name in used
        },
    )


def _deployment_for(plan: Plan, model: str):
    for d in plan.deployments:
        if model in (d.model, d.model_name):
            return d
    raise PlanError(f"no deployment in the plan serves model {model!r}")


def _resolution(image_tokens: int) -> int:
    return int(math.isqrt(image_tokens)) * PATCH_SIZE if image_tokens else DEFAULT_RESOLUTION


def _request_rate(tenant, workload) -> tuple[float, str]:
    """Open-loop arrivals: the workload's request_rate, else Little's law on the plan's
    predicted latency (concurrency / (TTFT + (mean output - 1) x TPOT))."""
    if workload.request_rate:
        return workload.request_rate, "workload.request_rate"
    e2e_ms = tenant.predicted_ttft_p95_ms + max(workload.output_tokens.mean - 1, 0) * tenant.predicted_tpot_ms
    if e2e_ms > 0:
        return workload.concurrency / (e2e_ms / 1e3), "concurrency / predicted E2E (Little's law)"
    e2e_ms = tenant.slo.ttft_p95_ms + max(workload.output_tokens.mean - 1, 0) * tenant.slo.tpot_p95_ms
    return workload.concurrency / (e2e_ms / 1e3), "concurrency / E2E at the SLO (no prediction in the plan)"


# --- request bodies (Locust side) ---------------------------------------------------------


def lognormal(mean: float, p95: float) -> tuple[float, float]:
    """(mu, sigma) of the log-normal with this mean and 95th percentile (sigma capped where the
    two cannot both hold)."""
    if mean <= 0:
        return -math.inf, 0.0
    ratio = math.log(max(p95, mean) / mean)
    disc = Z95 * Z95 - 2 * ratio
    sigma = Z95 - math.sqrt(disc) if disc > 0 else Z95
    return math.log(mean) - sigma * sigma / 2, sigma


def sample_tokens(rng: random.Random, mean: float, p95: float) -> int:
    mu, sigma = lognormal(mean, p95)
    if mu == -math.inf:
        return 1
    return max(1, round(rng.lognormvariate(mu, sigma) if sigma > 0 else mean))


def prompt_text(rng: random.Random, tokens: int, tokens_per_word: float = 1.0) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(round(tokens / tokens_per_word), 1)))


def chat_body(tenant: TenantTraffic, rng: random.Random, image_url: str) -> dict[str, Any]:
    """One streamed chat-completions request drawn from the tenant's workload."""
    return {
        "model": tenant.model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt_text(
                        rng, sample_tokens(rng, tenant.prompt_mean, tenant.prompt_p95), tenant.tokens_per_word
                    )},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            }
        ],
        "max_tokens": sample_tokens(rng, tenant.output_mean, tenant.output_p95),
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
