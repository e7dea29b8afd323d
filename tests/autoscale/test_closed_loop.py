"""The planner model's closed loop (autoscale/performance.py, ReplicaPerformance.closed_loop): b
clients each sending its next request when its reply ends, the other requests' prefills split
between a request's TTFT and its TPOT by mean value analysis. Reported beside a plan
(benchmarks/real_size.py), not used for sizing."""

import dataclasses

import pytest

from autoscale.catalog import HostFigures, accelerator_of
from autoscale.demand import demands
from autoscale.planner import plan
from autoscale.sizing import size_deployment
from planspecs import one_tenant

# probe version 2 on a quiet moment here (2026-11-30 08:00): decode-shaped bf16 products, matmuls
QUIET = HostFigures(16.0e9, (("bfloat16", 0.214e12), ("float32", 0.089e12)), "test")
LOOSE = dict(ttft=10_000_000.0, tpot=10_000_000.0)  # no SLO binds: the batch is the concurrency


def _perf(concurrency, host=QUIET, output=32, prompt=10):
    spec = one_tenant("paligemma-3b-pt-224", gpu="cpu", count=1, per_node=1, concurrency=concurrency,
                      prompt=prompt, output=output, **LOOSE)  # fmt: skip
    sizing = size_deployment(demands(spec)[0], accelerator_of(spec.gpus[0], host=host), spec.planner)
    assert sizing.planned_batch == concurrency
    return sizing.perf, sizing.load


def test_one_client_is_the_plans_figures():
    perf, load = _perf(1)
    loop = perf.closed_loop(1, load)
    assert loop.wait_s == 0 and loop.share_in_ttft == 0
    assert loop.ttft_s == perf.ttft_mean_s(1, load) and loop.tpot_s == perf.tpot_s(1, load)


@pytest.mark.parametrize("clients", [2, 4, 8])
def test_the_wait_is_the_mean_value_analysis_fixed_point(clients):
    """W = (b - 1) x prefill x (W + prefill) / E: each other request is at the prefill for its
    share (W + prefill) / E of the cycle, and costs a prefill when it is."""
    perf, load = _perf(clients)
    loop = perf.closed_loop(clients, load)
    prefill, step = perf.prefill_s(load.prompt_mean), perf.step_s(clients, load.context_mean)
    cycle = loop.wait_s + prefill + step + (load.output_mean - 1) * loop.tpot_s
    assert loop.wait_s == pytest.approx((clients - 1) * prefill * (loop.wait_s + prefill) / cycle, rel=1e-9)
    assert 0 < loop.share_in_ttft < 1


def test_the_other_prefills_move_from_tpot_into_ttft():
    """What the wait adds to the TTFT leaves the TPOT (over n tokens, as the plan's TPOT spreads
    them), so the request's whole time grows only by wait / n."""
    perf, load = _perf(4)
    loop = perf.closed_loop(4, load)
    n = load.output_mean
    assert loop.ttft_s == pytest.approx(perf.ttft_mean_s(4, load) + loop.wait_s)
    assert loop.tpot_s == pytest.approx(perf.tpot_s(4, load) - loop.wait_s / n)
    assert loop.e2e_s == pytest.approx(perf.e2e_s(4, load) + loop.wait_s / n)
    assert loop.tpot_s > perf.step_s(4, load.context_mean)  # some prefills stay in the decode


def test_more_clients_wait_longer():
    loops = [_perf(b)[0].closed_loop(b, _perf(b)[1]) for b in (2, 3, 4, 6, 8, 16)]
    assert all(a.ttft_s < b.ttft_s and a.e2e_s < b.e2e_s for a, b in zip(loops, loops[1:]))


def test_a_loop_of_requests_without_decode_waits_for_every_other_prefill():
    perf, load = _perf(4, output=1)
    loop = perf.closed_loop(4, load)
    assert loop.share_in_ttft == pytest.approx(1.0, abs=0.05)


def test_it_is_not_monotone_in_the_decode_speed_so_sizing_does_not_use_it():
    """Faster decode, same prefill: the requests come back sooner, the prefills take more of the
    engine's time and the closed loop's TTFT grows while its E2E falls. The plan is sized on the
    independent-arrivals figures, which a faster device never makes slower."""
    slow, load = _perf(4)
    fast, _ = _perf(4, host=dataclasses.replace(QUIET, bandwidth_bytes_s=4 * QUIET.bandwidth_bytes_s))
    assert fast.prefill_s(load.prompt_mean) == slow.prefill_s(load.prompt_mean)
    assert fast.closed_loop(4, load).ttft_s > slow.closed_loop(4, load).ttft_s
    assert fast.closed_loop(4, load).e2e_s < slow.closed_loop(4, load).e2e_s
    spec = one_tenant("paligemma-3b-pt-224", gpu="cpu", count=1, per_node=1, concurrency=4, prompt=10, output=32,
                      **LOOSE)  # fmt: skip
    predicted = plan(spec, host=QUIET).deployments[0].predicted
    assert predicted.ttft_mean_ms == pytest.approx(slow.ttft_mean_s(4, load) * 1e3, abs=0.01)
    assert predicted.tpot_ms == pytest.approx(slow.tpot_s(4, load) * 1e3, abs=0.01)


def test_against_the_closed_loops_measured_here():
    """benchmarks/real_size.py's concurrency-4 closed loops of 2026-11-30 (README, "Real size"):
    runs D and E (mean TTFT 16,204 and 14,199 ms, TPOT 755 and 700 ms, E2E 39.6 and 35.9 s) within
    the issue's 25%; run C's TTFT (11,409 ms, the requests paired less) is 43% under this."""
    perf, load = _perf(4)
    loop = perf.closed_loop(4, load)
    for ttft, tpot, e2e in ((16.204, 0.755, 39.625), (14.199, 0.700, 35.911)):
        assert abs(loop.ttft_s / ttft - 1) < 0.25
        assert abs(loop.tpot_s / tpot - 1) < 0.25
        assert abs(loop.e2e_s / e2e - 1) < 0.25
    assert perf.tpot_s(4, load) / 0.700 - 1 > 0.25  # the plan's independent arrivals: TPOT not met
