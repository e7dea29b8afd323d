"""Reading an OpenAI chat-completions SSE stream into a `Timeline`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from .latency import Timeline


class StreamError(Exception):
    """The server reported an error inside the stream, or the stream ended without [DONE]."""


def read_stream(lines: Iterable[bytes | str], since: float, clock: Callable[[], float]) -> Timeline:
    """Timestamps every `data:` event with a choice (relative to `since`) and keeps the usage.

    `lines` are the stream's lines as they arrive; `clock` is read when each one is parsed.
    """
    timeline = Timeline()
    done = False
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line or line.startswith(":") or not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            done = True
            break
        now = clock()
        event = json.loads(payload)
        if "error" in event:
            raise StreamError(event["error"].get("message", "error in stream"))
        if event.get("choices"):
            timeline.chunk_times.append(now - since)
        elif usage := event.get("usage"):
            timeline.output_tokens = usage.get("completion_tokens")
            timeline.prompt_tokens = usage.get("prompt_tokens")
    if not done:
        raise StreamError("stream ended before data: [DONE]")
    return timeline
