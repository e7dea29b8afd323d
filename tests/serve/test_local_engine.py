"""The in-process engine handle a colocated gateway uses behaves as a Serve handle call does:
calls run on their own, cancelling one cancels the engine request, errors reach the caller.
(The real engine behind it is exercised through the shared stack, which runs colocated.)"""

import asyncio

import pytest

from serve.local_engine import InProcessEngine
from serve.protocol import EngineChunk


class RecordingReplica:
    """Stands in for EngineReplica's coroutine interface and records what became of each call."""

    def __init__(self, chunks: int = 3, fail_after: int | None = None, delay: float = 0.0):
        self.chunks, self.fail_after, self.delay = chunks, fail_after, delay
        self.cancelled = 0
        self.finished = 0

    async def generate(self, request):
        try:
            for i in range(self.chunks):
                if self.fail_after is not None and i == self.fail_after:
                    raise ValueError("engine said no")
                await asyncio.sleep(self.delay)
                yield EngineChunk(text=str(i), prompt_tokens=1, completion_tokens=i + 1)
            self.finished += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def complete(self, request):
        last = None
        async for last in self.generate(request):
            pass
        return last

    async def check_health(self):
        return None


def test_stream_yields_every_chunk_then_stops():
    async def run():
        replica = RecordingReplica(chunks=3)
        stream = InProcessEngine(replica).options(stream=True, multiplexed_model_id="x").generate.remote(None)
        return [c.text async for c in stream], replica

    texts, replica = asyncio.run(run())
    assert texts == ["0", "1", "2"] and replica.finished == 1


def test_cancelling_a_stream_cancels_the_engine_request():
    async def run():
        replica = RecordingReplica(chunks=100, delay=0.01)
        stream = InProcessEngine(replica).generate.remote(None)
        await stream.__anext__()
        stream.cancel()
        await asyncio.sleep(0.05)
        return replica

    replica = asyncio.run(run())
    assert replica.cancelled == 1 and replica.finished == 0


def test_an_engine_error_reaches_the_stream_reader():
    async def run():
        stream = InProcessEngine(RecordingReplica(chunks=3, fail_after=1)).generate.remote(None)
        assert (await stream.__anext__()).text == "0"
        await stream.__anext__()

    with pytest.raises(ValueError, match="engine said no"):
        asyncio.run(run())


def test_a_completion_timing_out_cancels_the_engine_request():
    async def run():
        replica = RecordingReplica(chunks=100, delay=0.01)
        response = InProcessEngine(replica).complete.remote(None)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(response), 0.05)
        response.cancel()  # what the gateway does after a timeout
        await asyncio.sleep(0.05)
        return replica

    replica = asyncio.run(run())
    assert replica.cancelled == 1 and replica.finished == 0


def test_a_completion_returns_the_final_chunk():
    async def run():
        return await InProcessEngine(RecordingReplica(chunks=4)).complete.remote(None)

    assert asyncio.run(run()).completion_tokens == 4
