"""The closed loop's split of the other requests' prefills between TTFT and TPOT
(autoscale/performance.py, "The closed loop"). Pure planner arithmetic: no engine."""

import dataclasses
import math

import pytest

from autoscale.catalog import HostFigures, accelerator_of
from autoscale.demand import demands
from autoscale.sizing import size_deployment
from planspecs import one_tenant

# Run C's host probe (benchmarks/real_size.py, 2026-11-30 04:56 UTC): 20.6 GB/s, 0.218 TFLOP/s bf16
HOST = HostFigures(20.6e9, (("bfloat16", 0.218e12), ("float32", 0.0909e12)), "run C's probe")
NO_SLO = 10.0**7  # as benchmarks/real_size.py: no SLO binds


def _perf(concurrency, output=32, ttft=NO_SLO, tpot=NO_SLO):
    spec = one_tenant("paligemma-3b-pt-224", gpu="cpu", count=1, per_node=1, concurrency=concurrency, prompt=10,
                      output=output, ttft=ttft, tpot=tpot)  # fmt: skip
    sizing = size_deployment(demands(spec)[0], accelerator_of(spec.gpus[0], host=HOST), spec.planner)
    assert sizing.planned_batch == concurrency
    return sizing.perf, sizing.load


def _engine_e2e(perf, load, b):
    prefill, step, n = perf.prefill_s(load.prompt_mean), perf.step_s(b, load.context_mean), load.output_mean
    return prefill + step + (n - 1) * (step + (b - 1) * prefill / n)


def test_alone_nothing_is_waited_for():
    perf, load = _perf(1)
    assert perf.closed_loop_wait_s(1, load) == (0.0, 0.0)
    assert perf.ttft_mean_s(1, load) == perf.prefill_s(load.prompt_mean) + perf.step_s(1, load.context_mean)
    assert perf.tpot_s(1, load) == perf.step_s(1, load.context_mean)


def test_the_closed_loops_own_rate_when_the_slo_does_not_bind():
    """An SLO that never binds gives ~0 arrivals; the b requests in flight still arrive at b / E."""
    perf, load = _perf(4)
    assert load.arrivals_per_request_s < 1e-5
    prefill = perf.prefill_s(load.prompt_mean)
    rho = 3 * prefill / _engine_e2e(perf, load, 4)
    mean, p95 = perf.closed_loop_wait_s(4, load)
    assert mean == pytest.approx(rho * prefill / 2)
    assert p95 == pytest.approx(prefill * (1 - 0.05 / rho))
    # a request rate above the closed loop's own one raises the utilisation (capped at 1)
    busy = dataclasses.replace(load, arrivals_per_request_s=1.0)
    assert perf.closed_loop_wait_s(4, busy) == pytest.approx((prefill / 2, prefill * 0.95))


def test_the_wait_moves_from_tpot_to_ttft_and_the_request_time_stays():
    perf, load = _perf(4)
    prefill, n = perf.prefill_s(load.prompt_mean), load.output_mean
    mean, _ = perf.closed_loop_wait_s(4, load)
    step = perf.step_s(4, load.context_mean)
    assert perf.ttft_mean_s(4, load) == pytest.approx(prefill + step + mean)
    assert perf.tpot_s(4, load) == pytest.approx(step + 3 * prefill / n - mean / (n - 1))
    # E2E = TTFT mean + (n - 1) x TPOT is what it was before the split: all 3 other prefills, once each
    assert perf.e2e_s(4, load) == pytest.approx(_engine_e2e(perf, load, 4))


def test_ttft_p95_takes_the_remainder_of_a_running_prefill():
    perf, load = _perf(4)
    prefill, step = perf.prefill_s(load.prompt_mean), perf.step_s(4, load.context_mean)
    _, p95 = perf.closed_loop_wait_s(4, load)
    assert 0 < p95 < prefill  # one prefill's remainder, never the 3 prefills of the cap
    assert perf.ttft_p95_s(4, load, load.prompt_mean) == pytest.approx(prefill + step + p95)


def test_a_binding_request_rate_keeps_the_mm1_queue_when_it_is_larger():
    perf, load = _perf(4)
    prefill = perf.prefill_s(load.prompt_mean)
    heavy = dataclasses.replace(load, arrivals_per_request_s=0.9 / (4 * prefill))  # rho = 0.9
    mm1 = prefill / 0.1 * math.log(0.9 / 0.05)
    assert perf.queue_wait_p95_s(4, heavy) == pytest.approx(min(mm1, 3 * prefill))


def test_run_c_figures():
    """Against run C (benchmarks/real_size.py, 2026-11-30 04:51-05:03 UTC, 3B-224 bf16 random
    weights, 10 prompt + 32 output tokens, c=4 as a closed loop of 4 clients): measured TTFT mean
    11.41 s (3 of 4 requests 13.3-13.9 s, client 0's 7.1 s), TPOT mean 802 ms, E2E 36.29 s. The
    model: TTFT p95 13.56 s, TTFT mean 9.32 s, TPOT 789 ms, E2E 33.8 s (the mean); before the
    split TTFT 7.18 s, TPOT 860 ms."""
    perf, load = _perf(4)
    assert perf.ttft_p95_s(4, load, load.prompt_mean) == pytest.approx(13.56, rel=0.02)
    assert perf.ttft_mean_s(4, load) == pytest.approx(9.32, rel=0.02)
    assert perf.tpot_s(4, load) == pytest.approx(0.789, rel=0.02)
    assert perf.e2e_s(4, load) == pytest.approx(33.8, rel=0.02)
