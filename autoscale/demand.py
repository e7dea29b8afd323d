"""The load each model must carry, gathered from the tenants whose workload targets it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from paliserve.spec import Architecture, ClusterSpec, ModelSpec, Slo, TokenStats

from .catalog import architecture_of
from .errors import InfeasiblePlan
from .memory import PROMPT_FRAMING_TOKENS, round_up
from .performance import Load

MODEL_LEN_MULTIPLE = 256


@dataclass(frozen=True)
class TenantLoad:
    name: str
    concurrency: int
    baseline: int | None
    peak: int
    request_rate: float | None
    prompt: TokenStats
    output: TokenStats
    slo: Slo | None  # None for the placeholder load of a model no workload targets


@dataclass(frozen=True)
class Demand:
    model: ModelSpec
    arch: Architecture
    tenants: tuple[TenantLoad, ...]

    @property
    def image_tokens(self) -> int:
        return self.arch.vision.image_tokens

    @property
    def has_workload(self) -> bool:
        return any(t.slo is not None for t in self.tenants)

    @property
    def tpot_slo_s(self) -> float:
        slos = [t.slo.tpot_p95_ms / 1e3 for t in self.tenants if t.slo]
        return min(slos) if slos else math.inf

    def load(self) -> Load:
        """Concurrency-weighted mean request of the tenants."""
        total = sum(t.concurrency for t in self.tenants)
        return Load(
            image_tokens=self.image_tokens,
            prompt_mean=sum(t.prompt.mean * t.concurrency for t in self.tenants) / total,
            output_mean=sum(t.output.mean * t.concurrency for t in self.tenants) / total,
            arrivals_per_request_s=sum(self.arrival_rate(t) for t in self.tenants) / total,
        )

    @staticmethod
    def arrival_rate(tenant: TenantLoad) -> float:
        """Requests/s a tenant sends: its request_rate, else its concurrency over the longest
        request its SLOs allow (TTFT + (mean output - 1) x TPOT). Independent of the hardware, so a
        faster GPU is never charged with more arrivals."""
        if tenant.request_rate:
            return tenant.request_rate
        if tenant.slo is None:
            return 0.0
        longest = tenant.slo.ttft_p95_ms / 1e3 + max(tenant.output.mean - 1, 0) * tenant.slo.tpot_p95_ms / 1e3
        return tenant.concurrency / longest

    def request_tokens_p95(self, tenant: TenantLoad) -> int:
        return math.ceil(self.image_tokens + PROMPT_FRAMING_TOKENS + tenant.prompt.p95 + tenant.output.p95)

    def max_model_len(self) -> tuple[int, str]:
        """The longest p95 request, rounded up, within the model's position limit."""
        limit = self.arch.text.max_position_embeddings
        longest = max(self.tenants, key=self.request_tokens_p95)
        need = self.request_tokens_p95(longest)
        if need > limit:
            room = limit - self.image_tokens - PROMPT_FRAMING_TOKENS
            raise InfeasiblePlan(
                "max_model_len",
                f"tenant {longest.name}'s p95 request is {need} tokens ({self.image_tokens} image + "
                f"{PROMPT_FRAMING_TOKENS} framing + {longest.prompt.p95:g} prompt + "
                f"{longest.output.p95:g} output) but model {self.model.name} takes at most {limit}",
                f"keep prompt p95 + output p95 within {room} tokens for tenant {longest.name}"
                + (", or use a lower resolution (fewer image tokens)" if self.image_tokens > 256 else ""),
            )
        value = min(limit, round_up(need, MODEL_LEN_MULTIPLE))
        return value, (
            f"longest p95 request: tenant {longest.name}, {need} tokens ({self.image_tokens} image + "
            f"{PROMPT_FRAMING_TOKENS} framing + {longest.prompt.p95:g} prompt + {longest.output.p95:g} output), "
            f"rounded up to a multiple of {MODEL_LEN_MULTIPLE}, at most {limit}"
        )

    def longest_prefill_tokens(self) -> int:
        return max(
            math.ceil(self.image_tokens + PROMPT_FRAMING_TOKENS + t.prompt.p95) for t in self.tenants
        )


PLACEHOLDER_PROMPT = TokenStats(mean=20, p95=40)
PLACEHOLDER_OUTPUT = TokenStats(mean=64, p95=128)


def demands(spec: ClusterSpec) -> list[Demand]:
    """One Demand per spec model, in spec order."""
    by_model: dict[str, list[TenantLoad]] = {m.name: [] for m in spec.models}
    for tenant in spec.tenants:
        w = tenant.workload
        by_model[tenant.workload_model].append(
            TenantLoad(
                name=tenant.name,
                concurrency=w.concurrency,
                baseline=w.baseline_concurrency,
                peak=w.peak,
                request_rate=w.request_rate,
                prompt=w.prompt_tokens,
                output=w.output_tokens,
                slo=tenant.slo,
            )
        )
    result = []
    for model in spec.models:
        loads = by_model[model.name] or [
            TenantLoad("(none)", 1, None, 1, None, PLACEHOLDER_PROMPT, PLACEHOLDER_OUTPUT, None)
        ]
        result.append(Demand(model=model, arch=architecture_of(model), tenants=tuple(loads)))
    return result
