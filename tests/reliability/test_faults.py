"""Faults under load on one cluster of its own (two replicas of the tiny model, one gateway,
HAProxy in front):
a killed engine replica, a killed vLLM EngineCore process under an engine replica, a killed
gateway replica, then drains: scale-down from 2 to 1 and a redeploy with streams in flight; the
EngineCore of the only engine replica killed; last, the application redeployed colocated (two
replicas), an EngineCore process killed there, then scaled to one replica and its EngineCore
killed. Every client call has a timeout; a failure must be a 5xx with
a body or an error event inside a stream, never a hang. Figures are printed (run with -s).

Drains hold for requests up to the gateway's request timeout because build_app gives every
deployment that graceful_shutdown_timeout_s (with Serve's defaults, streams longer than 20 s
were cut when their replica stopped). A scale-down may stop the replica that holds none of the streams (Serve picks it): that
drain is then trivially clean, and the printed figure says how many streams were open."""

from __future__ import annotations

import pytest

from fault_stack import (
    GATEWAY,
    Figures,
    drain,
    failure_lines,
    fault_stack,
    kill_engine_process_under_load,
    kill_under_load,
    table,
)
from serve.ingress import FALLBACK_WAIT_S

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]


@pytest.fixture(scope="module")
def stack(tiny_model_dir):
    with fault_stack(tiny_model_dir) as stack:
        yield stack


def _clean(outcome) -> bool:
    if outcome.label == "200+in-band error":
        return True
    return outcome.label.isdigit() and 500 <= int(outcome.label) < 600 and bool(outcome.body.strip())


def _closed_by_haproxy(outcome) -> bool:
    """HAProxy answers a request whose ingress replica died after taking it by closing the client's
    connection without a response, as the server did (the client may retry: the openai client
    does); it never leaves the client waiting."""
    return outcome.label == "connection error" and "without sending a response" in outcome.body


def _report(figures: Figures) -> None:
    print("\n" + "\n".join([table([figures]), *failure_lines(figures)]))


def _check_fault(figures: Figures, clean=_clean) -> None:
    _report(figures)
    assert figures.hung == 0, figures.failures
    assert all(clean(o) for o in figures.failures), [(o.label, o.body) for o in figures.failures if not clean(o)]
    assert figures.recovery_s is not None, "no 200 after the last failure"


def test_killing_an_engine_replica_under_load(stack):
    _check_fault(kill_under_load(stack, stack.engine, "kill 1 of 2 engine replicas"))


# the ingress stops sending requests to a replica whose engine died within this (Serve's health
# check every 2 s, 3 failures to replace it; HAProxy checks every second: serve/engine.py, ingress.py)
DEAD_ENGINE_OUT_OF_ROTATION_S = 15


# with no replica up, a request waits at most FALLBACK_WAIT_S in Serve's fallback proxy for one
# (serve/ingress.py), then gets a 503; the slack is for the 2 shared cores (answers took up to
# 5.0 s at load average 60-75)
NO_REPLICA_ANSWER_S = FALLBACK_WAIT_S + 6
NO_REPLICA = "No replica is up"  # the fallback proxy's 503 (code service_unavailable)


def _check_dead_engine(figures: Figures, only_replica: bool = False) -> None:
    """EngineCore killed: every failure a 503 with Retry-After and OpenAI's error body, or an
    in-band `engine_unavailable` event in a stream already started; none hung; the ingress stops
    sending to the dead replica within seconds (with one replica: every request is answered
    within seconds until the new replica serves, once Serve stopped the dead one by the fallback
    proxy's 503 `service_unavailable`); Serve replaces it and 200s continue."""
    _report(figures)
    assert figures.hung == 0, figures.failures
    for o in figures.failures:
        if o.label == "503":
            assert o.retry_after is not None and int(o.retry_after) >= 1, (o.label, o.retry_after, o.body)
            assert '"engine_unavailable"' in o.body or (only_replica and '"service_unavailable"' in o.body), o.body
        else:
            assert o.label == "200+in-band error" and '"engine_unavailable"' in o.body, (o.label, o.body)
    assert figures.failed > 0, "the kill failed no request: did it hit the engine?"
    assert figures.recovery_s is not None, "no 200 after the last failure"
    if only_replica:
        slowest = sorted(figures.failures, key=lambda o: o.start - o.end)[:3]
        assert figures.slowest_failure_s < NO_REPLICA_ANSWER_S, (figures.notes, [(o.label, round(o.end - o.start, 2), o.body[-120:]) for o in slowest])
    else:
        assert figures.last_failure_s is not None and figures.last_failure_s < DEAD_ENGINE_OUT_OF_ROTATION_S, figures.notes


def test_killing_the_engine_process_under_load(stack):
    """Separate gateway: SIGKILL of one engine replica's vLLM EngineCore process."""
    _check_dead_engine(kill_engine_process_under_load(stack, "kill EngineCore of 1 of 2 engine replicas (separate gateway)"))


def test_killing_the_gateway_replica_under_load(stack):
    figures = kill_under_load(stack, GATEWAY, "kill the gateway replica")
    _check_fault(figures, clean=lambda o: _clean(o) or _closed_by_haproxy(o))


def _check_drain(figures: Figures) -> None:
    _report(figures)
    assert figures.hung == 0 and figures.failed == 0, [(o.label, o.body) for o in figures.failures]
    assert figures.after is not None and figures.after.ok, figures.after


def test_scale_down_drains_in_flight_streams(stack):
    _check_drain(drain(stack, stack.with_engine_replicas(1), "scale engine 2 -> 1, streams open", replicas_after=1))


def test_redeploy_drains_in_flight_streams(stack):
    figures = drain(stack, stack.with_max_image_bytes(5 * 1024 * 1024), "redeploy, streams open", replicas_after=1)
    _check_drain(figures)
    if figures.open_at_stop == 0:
        # Serve starts the new replicas before it stops the old ones; on 2 busy cores the new
        # engine (and sometimes the build of the new config) can take longer than the longest
        # stream the tiny model's 2,048-token context allows (~40 s), so no stream is left to drain.
        pytest.xfail("every stream ended before a replica began stopping: nothing was drained this time")


def test_killing_the_only_engine_process_separate_gateway(stack):
    """One engine replica left (the drains scaled it down): its EngineCore killed. The gateway
    stays up, so HAProxy keeps sending to it; once Serve stopped the dead engine replica, the
    gateway's call would wait in Serve's router for a new one, and is answered 503 + Retry-After
    after ENGINE_WAIT_S instead (serve/gateway.py)."""
    if stack.replica_states(stack.engine) != {"RUNNING": 1}:  # run on its own (-k)
        stack.deploy(stack.with_engine_replicas(1))
        stack.wait_steady(1)
    figures = kill_engine_process_under_load(stack, "kill EngineCore of the only engine replica (separate gateway)", settle_s=3)
    _check_dead_engine(figures, only_replica=True)
    assert figures.slowest_s < NO_REPLICA_ANSWER_S, figures.notes


def test_killing_the_engine_process_colocated(stack):
    """The default topology of a one-model plan, two replicas (redeployed in place, after the
    separate-gateway tests, since the redeploy replaces the separate deployments)."""
    stack.redeploy_colocated(replicas=2)
    _check_dead_engine(kill_engine_process_under_load(stack, "kill EngineCore of 1 of 2 replicas (colocated)"))


def test_killing_the_only_engine_process_colocated(stack):
    """One colocated replica (scaled down from the previous test's two): its EngineCore killed.
    Once Serve stops the replica HAProxy has no server and sends requests to Serve's fallback
    proxy, which answers 503 + Retry-After after FALLBACK_WAIT_S (serve/ingress.py)."""
    if not stack.plan.colocated:  # run on its own (-k)
        stack.redeploy_colocated(replicas=1)
    stack.deploy(stack.with_engine_replicas(1))
    stack.wait_steady(1)
    figures = kill_engine_process_under_load(stack, "kill EngineCore of the only replica (colocated)", settle_s=3)
    _check_dead_engine(figures, only_replica=True)
    fallback = [o for o in figures.failures if NO_REPLICA in o.body]
    print(f"{len(fallback)} answered by the fallback proxy, in "
          f"{min((o.end - o.start for o in fallback), default=0):.1f}-{max((o.end - o.start for o in fallback), default=0):.1f} s")
    assert fallback, "no request reached the fallback proxy: did Serve stop the replica before its replacement served?"
    assert figures.slowest_s < NO_REPLICA_ANSWER_S, figures.notes
