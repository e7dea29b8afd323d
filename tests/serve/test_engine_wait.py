"""An engine call that waits on an engine deployment with no replica up is answered 503 +
Retry-After after ENGINE_WAIT_S (serve/gateway.py `_answer`, serve/replica_states.py), instead of
waiting in Serve's router for a new replica; a slow answer from a running engine is waited for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serve import gateway
from serve.errors import EngineUnavailable
from serve.replica_states import DeploymentWatch
from serve.tenancy.access import Target

HANDLE = SimpleNamespace(app_name="paliserve", deployment_name="tiny-paligemma")


class Ask:
    def __init__(self, answer: bool):
        self.answer, self.calls = answer, []

    async def __call__(self, **kwargs) -> bool:
        self.calls.append(kwargs)
        await asyncio.sleep(0.01)
        return self.answer


def test_a_burst_of_waiting_requests_asks_serve_once_per_interval():
    ask = Ask(True)
    watch = DeploymentWatch(ask, cache_s=0.2)

    async def scenario():
        first = await asyncio.gather(*(watch.missing(HANDLE) for _ in range(50)))
        await asyncio.sleep(0.25)
        return first, await watch.missing(HANDLE)

    first, later = asyncio.run(scenario())
    assert all(first) and later
    assert ask.calls == [{"app": "paliserve", "deployment": "tiny-paligemma", "unknown": False}] * 2


def test_the_fallback_proxys_question_is_shared_too():
    ask = Ask(False)
    watch = DeploymentWatch(ask)

    async def scenario():
        return await asyncio.gather(*(watch.any_missing() for _ in range(50)))

    assert not any(asyncio.run(scenario()))
    assert ask.calls == [{"app": None, "deployment": None, "unknown": True}]


def test_an_in_process_engine_is_never_asked_about():
    ask = Ask(True)
    assert asyncio.run(DeploymentWatch(ask).missing(object())) is False and not ask.calls


def _answer(result_after_s: float, missing: bool, wait_s: float = 0.1, timeout_s: float = 5):
    ask = Ask(missing)
    self = SimpleNamespace(engine_watch=DeploymentWatch(ask), engines={"m": HANDLE})

    async def engine_call():
        await asyncio.sleep(result_after_s)
        return "chunk"

    async def scenario():
        return await gateway.Gateway.func_or_class._answer(self, engine_call(), Target("m"), timeout_s, wait_s)

    return asyncio.run(scenario()), ask


def test_a_prompt_answer_never_asks():
    result, ask = _answer(0.0, missing=True)
    assert result == "chunk" and not ask.calls


def test_a_slow_answer_from_a_running_engine_is_waited_for():
    result, ask = _answer(0.4, missing=False)
    assert result == "chunk" and len(ask.calls) == 1


def test_a_call_to_an_engine_with_no_replica_up_gets_503_with_retry_after():
    with pytest.raises(EngineUnavailable) as raised:
        _answer(30, missing=True)
    assert raised.value.status_code == 503 and raised.value.headers["Retry-After"] == str(gateway.ENGINE_RETRY_S)
    assert raised.value.body()["error"]["code"] == "engine_unavailable"


def test_the_request_timeout_still_holds_after_the_wait():
    with pytest.raises(asyncio.TimeoutError):
        _answer(30, missing=False, timeout_s=0.3)
