"""Performance model of one replica: prefill, decode step, TPOT, TTFT with queueing.

Analytic (datasheet bandwidth/FLOP/s times efficiencies) unless a measured `Profile` for the same
model and accelerator is given. Times are seconds.

- Prefill = max(FLOPs / (eta_compute x peak), weight bytes / (eta_memory x bandwidth)) + step overhead,
  with the vision encoder's FLOPs over the image tokens included.
- Decode step at batch b = max(weights read + b x KV read over eta_memory x bandwidth,
  b tokens of FLOPs over eta_compute x peak) + step overhead (+ all-reduces under tensor parallelism).
- TPOT at batch b = step(b) + (b - 1) x prefill / output tokens: with chunked prefill every arriving
  request's prefill shares a step with the running decodes; while one request makes its n tokens
  the b - 1 others are each replaced about once (its own prefill comes before its first token).
  This is the steady state of requests that arrive independently; b requests of one length
  started together stay in lockstep instead, their prefills batched and no decode interrupted.
- TTFT p95 = queue wait p95 + prefill of the p95 prompt + one decode step. Requests wait for the
  prefill "server" of their replica: an M/M/1 queue at utilisation rho = lambda x prefill, with
  lambda = batch x the load's arrivals per request in flight (hardware-independent, see demand.py);
  p95 wait = prefill / (1 - rho) x ln(rho / 0.05), at most (batch - 1) prefills (only the other
  requests in flight can be ahead).
- Throughput at batch b: b requests in flight, each taking E2E = mean TTFT + (output - 1) x TPOT,
  so b / E2E requests/s and b x output / E2E tokens/s (Little's law).

A closed loop (`ReplicaPerformance.closed_loop`, reported, not used for sizing). b clients that
each send their next request when the previous reply ends split the other requests' prefills
differently: an arriving request often finds some ahead of it, so they move from its TPOT into its
TTFT. By the arrival theorem of closed queueing networks (mean value analysis), an arriving request
finds each of the b - 1 others at the prefill (waiting for it or in it) with the share of its cycle
E it spends there, (W + prefill) / E, and waits a prefill for each: W = (b - 1) x prefill x
(W + prefill) / E, where E = W + prefill + (n - 1) x TPOT + step and TPOT keeps the rest of the
others' prefills, step(b) + ((b - 1) x prefill - W) / n. With n output tokens this is a quadratic in
W with one positive root. It is not monotone in the device: a faster decode brings the requests
back sooner, the prefills take a larger share of the engine's time and the TTFT grows while E2E
falls. Sizing therefore keeps the independent-arrivals model above (monotone in every speed, see
tests/autoscale/test_properties.py); the closed loop is what benchmarks/real_size.py holds its
closed-loop measurements against.

The serving path. The engine's figures leave out what a client also waits for: HTTP, the gateway,
image decoding and preprocessing, streaming, and the CPU those share with the engine. When the
profile has serving points (measured through the endpoint at several concurrencies), the path's
share at each point is the measured figure less the engine model's at the same concurrency and
request sizes; it is interpolated over concurrency and added to the engine model. The measured TTFT
includes the queueing of a closed loop at that concurrency, so it replaces the queue model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from paliserve.spec import Architecture

from .catalog import Accelerator
from .memory import (
    PROMPT_FRAMING_TOKENS,
    decode_read_bytes,
    kv_bytes_for_request,
    param_counts,
    weight_bytes,
)
from .profile import Profile, interpolate, through

ALLREDUCE_LATENCY_S = 20e-6
PROBE_MEMORY, PROBE_COMPUTE, PROBE_STEP_S = 1.0, 0.85, 0.002  # see Efficiency.host_probe


@dataclass(frozen=True)
class Efficiency:
    memory: float
    compute: float
    step_overhead_s: float
    basis: str = "datasheet"  # or "host probe": fractions of the probe's measured figures

    @classmethod
    def of(cls, accelerator: Accelerator) -> Efficiency:
        return cls.host_probe() if accelerator.probed else cls.datasheet(accelerator.device)

    @classmethod
    def datasheet(cls, device: str) -> Efficiency:
        if device == "cpu":
            return cls(memory=0.5, compute=0.3, step_overhead_s=0.0015)
        return cls(memory=0.75, compute=0.5, step_overhead_s=0.002)

    @classmethod
    def host_probe(cls) -> Efficiency:
        """vLLM's CPU engine against the host probe's figures (autoscale/host_probe.py) on the
        same machine: a decode step reads the weights at the probe's bandwidth, which (probe
        version 2) is what decode-shaped products x[1..4, d] @ W stream weights at through the
        oneDNN kernel on prepacked weights that vLLM's linear layers use, in the engine's dtype
        (PROBE_MEMORY 1: no factor; version 1's float32 sum read about 1.8x faster than these
        products and needed one), and the prefill (SigLIP and decoder) runs at PROBE_COMPUTE x the
        probe's prefill-shaped matmul (the same oneDNN products, measured equal per product;
        attention, norms and activations besides), plus a fixed cost per step (the engine's
        scheduling, sampling and the model's small operations; not measured apart). README, "CPU
        figures from the host probe", has the measurements."""
        return cls(memory=PROBE_MEMORY, compute=PROBE_COMPUTE, step_overhead_s=PROBE_STEP_S, basis="host probe")

    def describe(self, accelerator: Accelerator | None = None) -> str:
        text = (
            f"{self.basis} efficiencies: {self.memory:.0%} of bandwidth, {self.compute:.0%} of peak "
            f"FLOP/s, {self.step_overhead_s * 1e3:g} ms per step"
        )
        if accelerator is not None and accelerator.speed_source != "catalog":
            rates = ", ".join(f"{f / 1e12:.3g} TFLOP/s {d}" for d, f in accelerator.flops_by_dtype) or (
                f"{accelerator.flops / 1e12:.3g} TFLOP/s")
            text += (f"; {accelerator.name}'s {accelerator.bandwidth_bytes_s / 1e9:.3g} GB/s and {rates} from the "
                     f"{accelerator.speed_source}")  # fmt: skip
        return text


@dataclass(frozen=True)
class Load:
    """The request mix one deployment carries (concurrency-weighted means over its tenants)."""

    image_tokens: int
    prompt_mean: float
    output_mean: float
    arrivals_per_request_s: float = 0.0  # request rate per request in flight (see demand.py)

    @property
    def tokens_mean(self) -> float:
        """Tokens a request holds when it finishes."""
        return self.image_tokens + PROMPT_FRAMING_TOKENS + self.prompt_mean + self.output_mean

    @property
    def context_mean(self) -> float:
        """Average sequence length over a request's decode steps."""
        return self.image_tokens + PROMPT_FRAMING_TOKENS + self.prompt_mean + self.output_mean / 2


@dataclass(frozen=True)
class ClosedLoop:
    """Means of a closed loop of `batch` clients at one replica (ReplicaPerformance.closed_loop)."""

    batch: int
    wait_s: float  # before the request's prefill starts: the other requests' prefills ahead of it
    ttft_s: float  # wait + prefill of the mean prompt + one step (+ the serving path's mean share)
    tpot_s: float
    e2e_s: float  # ttft + (output - 1) x tpot
    share_in_ttft: float  # of the other requests' prefills, the share in a request's TTFT (the rest: TPOT)


@dataclass(frozen=True)
class ReplicaPerformance:
    arch: Architecture
    dtype: str
    dtype_bytes: int
    quantization: str
    accelerator: Accelerator
    share: float  # fraction of each device this replica gets
    tp: int
    efficiency: Efficiency
    block_size: int = 16
    profile: Profile | None = None

    # --- fixed quantities, computed once ------------------------------------------------
    @cached_property
    def params(self):
        return param_counts(self.arch)

    @cached_property
    def weights(self) -> int:
        return weight_bytes(self.arch, self.dtype, self.quantization)

    @cached_property
    def decode_reads(self) -> int:
        return decode_read_bytes(self.arch, self.dtype, self.quantization)

    # --- hardware as this replica sees it ----------------------------------------------
    @property
    def bandwidth(self) -> float:
        return self.accelerator.bandwidth_bytes_s * self.share * self.tp * self.efficiency.memory

    @property
    def flops(self) -> float:
        return self.accelerator.flops_for(self.dtype) * self.share * self.tp * self.efficiency.compute

    @property
    def comm_s(self) -> float:
        return 2 * self.arch.text.num_layers * ALLREDUCE_LATENCY_S if self.tp > 1 else 0.0

    # --- prefill -------------------------------------------------------------------------
    def vision_flops(self) -> float:
        counts = self.params
        v = self.arch.vision
        n = v.image_tokens
        return 2 * (counts.vision + counts.projector) * n + 4 * n * n * v.hidden_size * v.num_layers

    def text_prefill_flops(self, text_tokens: float) -> float:
        t = self.arch.text
        n = self.arch.vision.image_tokens + PROMPT_FRAMING_TOKENS + text_tokens
        linear = 2 * self.params.text_linear * n
        attention = 2 * n * n * t.num_heads * t.head_dim * t.num_layers  # causal half of 4 n^2 d
        lm_head = 2 * t.vocab_size * t.hidden_size
        return linear + attention + lm_head

    def vision_s(self) -> float:
        if self.profile is not None:
            return 0.0  # measured inside prefill
        return self.vision_flops() / self.flops

    def prefill_s(self, text_tokens: float) -> float:
        """Vision encoder + prefill of one request with `text_tokens` prompt tokens."""
        if self.profile is not None:
            return self.profile.prefill_seconds(text_tokens) / self.share
        compute = (self.vision_flops() + self.text_prefill_flops(text_tokens)) / self.flops
        memory = self.weights / self.bandwidth
        return max(compute, memory) + self.efficiency.step_overhead_s + self.comm_s

    # --- decode --------------------------------------------------------------------------
    @cached_property
    def _decode_points(self) -> list[tuple[float, float]]:
        """The profile's decode steps by batch, each measured between two others taken at no more
        than the slower of those two: nothing in a decode step peaks at an intermediate batch (a
        larger batch streams the same weights, and oneDNN's products can even stream them faster:
        the host probe's batch-4 products run faster than batch 1's here), while `paliserve
        profile`, which starts a batch's requests together, adds a prefill to the gaps of a
        request whose neighbour's prefill lands in its decode (run D's profile: batch 2 at 0.63 s,
        batch 4 at 0.32; on 2026-11-30 09:04 batch 2 at 0.58 s between batch 1's 0.34 and batch
        4's 0.29). The end points stay as measured."""
        points = [(p.batch, p.step_seconds) for p in self.profile.decode]
        return [points[0]] + [
            (batch, min(seconds, max(points[i][1], points[i + 2][1])))
            for i, (batch, seconds) in enumerate(points[1:-1])
        ] + points[1:][-1:]

    def step_s(self, batch: float, context_tokens: float) -> float:
        if self.profile is not None:
            return interpolate(self._decode_points, batch) / self.share
        kv = kv_bytes_for_request(self.arch.text, context_tokens, self.dtype_bytes, self.block_size, self.tp)
        reads = self.decode_reads / self.tp + batch * kv
        memory = reads * self.tp / self.bandwidth  # each rank reads its share at its bandwidth
        compute = 2 * self.params.text_linear * batch / self.flops
        return max(memory, compute) + self.efficiency.step_overhead_s + self.comm_s

    def engine_tpot_s(self, batch: float, load: Load) -> float:
        prefill_per_step = max(batch - 1, 0) * self.prefill_s(load.prompt_mean) / max(load.output_mean, 1.0)
        return self.step_s(batch, load.context_mean) + prefill_per_step

    def tpot_s(self, batch: float, load: Load) -> float:
        return max(self.engine_tpot_s(batch, load) + self.path_s("tpot", batch), 1e-6)

    def e2e_s(self, batch: float, load: Load) -> float:
        return self.ttft_mean_s(batch, load) + max(load.output_mean - 1, 0) * self.tpot_s(batch, load)

    def tokens_per_s(self, batch: float, load: Load) -> float:
        return batch * max(load.output_mean, 1.0) / self.e2e_s(batch, load)

    def requests_per_s(self, batch: float, load: Load) -> float:
        return batch / self.e2e_s(batch, load)

    # --- the serving path (from the profile's serving points) ------------------------------
    @property
    def serving_measured(self) -> bool:
        return self.profile is not None and bool(self.profile.serving)

    @cached_property
    def _path_points(self) -> dict[str, list[tuple[float, float]]]:
        """Per concurrency, what the measured endpoint added to the engine model's figures. The
        measured figures are first made non-decreasing in concurrency (noise aside, latency
        never falls as load grows). The engine is taken at the share it was profiled with (1)."""
        profile = self.profile
        workload = profile.serving_workload
        load = Load(image_tokens=profile.image_tokens, prompt_mean=workload.prompt_tokens_mean,
                    output_mean=workload.output_tokens_mean)  # fmt: skip
        engine = ReplicaPerformance(self.arch, self.dtype, self.dtype_bytes, self.quantization, self.accelerator,
                                    1.0, self.tp, self.efficiency, self.block_size, profile)  # fmt: skip
        paths: dict[str, list[tuple[float, float]]] = {"ttft_p95": [], "ttft_mean": [], "tpot": []}
        highest = dict.fromkeys(paths, 0.0)
        for point in profile.serving:
            c = point.concurrency
            step = engine.step_s(c, load.context_mean)
            measured = {"ttft_p95": point.ttft_p95_seconds, "ttft_mean": point.ttft_mean_seconds,
                        "tpot": point.tpot_mean_seconds}  # fmt: skip
            modelled = {"ttft_p95": engine.prefill_s(workload.prompt_tokens_p95) + step,
                        "ttft_mean": engine.prefill_s(workload.prompt_tokens_mean) + step,
                        "tpot": engine.engine_tpot_s(c, load)}  # fmt: skip
            for kind in paths:
                highest[kind] = max(highest[kind], measured[kind])
                paths[kind].append((c, highest[kind] - modelled[kind]))
        return paths

    def path_s(self, kind: str, batch: float) -> float:
        """Seconds the serving path adds to `kind` (ttft_p95, ttft_mean, tpot) at this batch; 0
        without serving points."""
        if not self.serving_measured:
            return 0.0
        return through(self._path_points[kind], batch)

    # --- TTFT ----------------------------------------------------------------------------
    def queue_wait_p95_s(self, batch: float, load: Load) -> float:
        service = self.prefill_s(load.prompt_mean)
        ahead = max(batch - 1, 0) * service  # closed loop: at most the other requests are ahead
        rho = batch * load.arrivals_per_request_s * service
        if rho >= 1:
            return ahead
        queue = service / (1 - rho) * math.log(rho / 0.05) if rho > 0.05 else 0.0
        return min(queue, ahead)

    def ttft_p95_s(self, batch: float, load: Load, prompt_p95: float) -> float:
        return self.prefill_s(prompt_p95) + self.ttft_p95_besides_prefill_s(batch, load)

    def ttft_p95_besides_prefill_s(self, batch: float, load: Load) -> float:
        """The part of TTFT p95 that does not depend on the prompt: one step, and the queue (or,
        when measured, the serving path, which includes it)."""
        step = self.step_s(batch, load.context_mean)
        if self.serving_measured:
            return step + max(self.path_s("ttft_p95", batch), 0.0)
        return self.queue_wait_p95_s(batch, load) + step

    def closed_loop(self, batch: int, load: Load) -> ClosedLoop:
        """Mean TTFT, TPOT and E2E of `batch` clients in a closed loop (module docstring): the
        positive root of W^2 / n + (prefill + n x step - A / n) x W - A x prefill = 0, A = (b - 1)
        x prefill, the other requests' prefill time within one request's. One client: the plan's
        figures. With serving points the measured path already holds the loop's queueing (it was
        measured in closed loops): the plan's figures too."""
        tpot, ttft = self.tpot_s(batch, load), self.ttft_mean_s(batch, load)
        others = max(batch - 1, 0) * self.prefill_s(load.prompt_mean)
        if others == 0 or self.serving_measured:
            return ClosedLoop(batch, 0.0, ttft, tpot, ttft + max(load.output_mean - 1, 0) * tpot, 0.0)
        n = max(load.output_mean, 1.0)
        prefill = self.prefill_s(load.prompt_mean)
        step = self.step_s(batch, load.context_mean)
        linear = prefill + n * step - others / n  # the root in the form that loses no digits
        root = math.sqrt(linear * linear + 4 * others * prefill / n)
        wait = 2 * others * prefill / (root + linear) if linear > 0 else n / 2 * (root - linear)
        wait = min(max(wait, 0.0), others)
        ttft, tpot = ttft + wait, max(tpot - wait / n, 1e-6)
        return ClosedLoop(batch, wait, ttft, tpot, ttft + max(load.output_mean - 1, 0) * tpot, wait / others)

    def ttft_mean_s(self, batch: float, load: Load) -> float:
        """Prefill of the mean prompt and one step, plus the serving path's mean share (the queue
        model's mean is not kept apart: without serving points it is left out)."""
        first_token = self.prefill_s(load.prompt_mean) + self.step_s(batch, load.context_mean)
        return first_token + max(self.path_s("ttft_mean", batch), 0.0)
