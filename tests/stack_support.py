"""Helpers of the own-cluster stacks (autoscaling, faults): a chat body, a bounded wait."""

from __future__ import annotations

import base64
import io
import time


def chat_body(model: str, max_tokens: int, stream: bool = False, color: tuple[int, int, int] = (200, 40, 40)) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buf, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {
        "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "caption en"}, {"type": "image_url", "image_url": {"url": image}}]}],
    }  # fmt: skip


def wait_for(condition, timeout_s: float, every_s: float = 1.0, what: str = ""):
    """`condition()`'s first truthy value within `timeout_s`, else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s:g}s: {what} (last: {last!r})")
