"""Without a stack: chat options reach vLLM's SamplingParams or are refused, and a dead engine
is a 503 with Retry-After wherever it surfaces (the replica, or a separate gateway)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from serve.engine import EngineReplica, engine_dead
from serve.errors import EngineUnavailable
from serve.gateway import SAMPLING_EXTENSIONS, _engine_failure
from serve.protocol import EngineRequest
from serve.schemas import ChatCompletionRequest

MESSAGES = [{"role": "user", "content": "caption en"}]


def test_sampling_extensions_reach_vllm_only_when_set():
    plain = EngineRequest("r", "p", None).sampling_kwargs()
    assert set(plain) == {"max_tokens", "temperature", "top_p", "stop", "seed"}
    body = ChatCompletionRequest(messages=MESSAGES, top_k=5, min_p=0.1, ignore_eos=True, min_tokens=3,
                                 repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=-0.2)  # fmt: skip
    kwargs = EngineRequest("r", "p", None, **body.model_dump(include=SAMPLING_EXTENSIONS)).sampling_kwargs()
    assert {k: kwargs[k] for k in SAMPLING_EXTENSIONS} == {
        "top_k": 5, "min_p": 0.1, "ignore_eos": True, "min_tokens": 3, "repetition_penalty": 1.1,
        "frequency_penalty": 0.2, "presence_penalty": -0.2}  # fmt: skip

    from vllm import SamplingParams

    SamplingParams(**kwargs)  # vLLM takes every one of them under these names


@pytest.mark.parametrize("extra,loc", [({"tools": []}, ("tools",)), ({"stream": True, "stream_options": {"x": 1}}, ("stream_options", "x"))])
def test_unknown_fields_are_refused_not_dropped(extra, loc):
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest(messages=MESSAGES, **extra)
    error = caught.value.errors()[0]
    assert (error["type"], error["loc"]) == ("extra_forbidden", loc)


class EngineDeadError(Exception):
    """Stands for vllm.v1.engine.exceptions.EngineDeadError (matched by name)."""


class RayTaskError(Exception):
    def __init__(self, cause):
        super().__init__("task failed")
        self.cause = cause


def test_a_separate_gateway_maps_a_dead_engine_to_503():
    for exc in (EngineDeadError(), RayTaskError(EngineDeadError())):
        failure = _engine_failure(exc)
        assert (failure.status_code, failure.code) == (503, "engine_unavailable")
        assert int(failure.headers["Retry-After"]) >= 1
    assert _engine_failure(RayTaskError(engine_dead())).headers == engine_dead().headers  # the replica's own 503


class _DeadEngine:
    errored = True


def test_a_replica_whose_engine_died_refuses_at_once():
    replica = object.__new__(EngineReplica)
    replica.engine = _DeadEngine()

    async def run():
        async for _ in replica._run(EngineRequest("r", "p", None), None):
            pass

    with pytest.raises(EngineUnavailable) as caught:
        asyncio.run(run())
    assert caught.value.status_code == 503 and caught.value.headers["Retry-After"] == "3"
