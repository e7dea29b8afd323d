"""An engine replica in the gateway's own process, behind the part of a Serve deployment handle
the gateway uses (`options(...)`, `complete/generate/check_health.remote(...)`, `cancel()`).

A colocated gateway (`Plan.colocated`) serves through it: one process and one Ray actor call
fewer per request than calling an engine deployment. Calls run as asyncio tasks, so they behave
as handle calls do: they proceed while the caller waits elsewhere, and `cancel()` (or a cancelled
caller of a completion) cancels the engine request, which vLLM aborts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from serve.engine import EngineReplica
from serve.protocol import EngineChunk

_END = object()


class LocalStream:
    """A stream of chunks pumped from the engine by its own task, like a streaming handle call."""

    def __init__(self, chunks: AsyncIterator[EngineChunk]):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump(chunks))

    async def _pump(self, chunks: AsyncIterator[EngineChunk]) -> None:
        try:
            async for chunk in chunks:
                self._queue.put_nowait(chunk)
        except Exception as exc:  # handed to the reader; cancellation ends the pump quietly
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(_END)

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> EngineChunk:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self._task.cancel()


class _Method:
    def __init__(self, call: Callable[..., Any]):
        self.remote = call


class InProcessEngine:
    """Handle-shaped access to an `EngineReplica` living in this process."""

    def __init__(self, replica: EngineReplica):
        self.replica = replica

    def options(self, **_: Any) -> InProcessEngine:
        """Routing options (stream, multiplexed id) mean nothing here: the request names its adapter."""
        return self

    @property
    def complete(self) -> _Method:
        return _Method(lambda request: asyncio.ensure_future(self.replica.complete(request)))

    @property
    def generate(self) -> _Method:
        return _Method(lambda request: LocalStream(self.replica.generate(request)))

    @property
    def check_health(self) -> _Method:
        return _Method(lambda: asyncio.ensure_future(self.replica.check_health()))
