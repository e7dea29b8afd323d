"""A client that disconnects mid-stream aborts its engine request."""

import time

import httpx
import pytest
from serve_helpers import AUTH, chat_body, data_url, engine_in_flight, png_bytes

pytestmark = pytest.mark.engine


def test_disconnect_mid_stream_aborts_the_engine_request(url, ray_client):
    assert engine_in_flight(ray_client) == 0
    body = chat_body(image=data_url(png_bytes()), stream=True, max_tokens=2000, temperature=0)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            for _ in range(6):
                next(lines)
            assert engine_in_flight(ray_client) == 1
    left = time.monotonic()
    # ~2000 tokens take several seconds on this CPU; the abort frees the engine well before
    deadline = time.monotonic() + 10
    while engine_in_flight(ray_client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine_in_flight(ray_client) == 0, "engine request still running after the client left"
    freed_after = time.monotonic() - left

    # the same request run to completion takes longer than the abort did
    full = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, headers=AUTH, timeout=120)
    assert full.json()["usage"]["completion_tokens"] > 1000, "too short to tell an abort from completion"
    assert freed_after < full.elapsed.total_seconds()
