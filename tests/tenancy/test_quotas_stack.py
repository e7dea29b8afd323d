"""Quotas through the real stack: 429s begin within 5% of each configured limit, with
Retry-After and a message naming the limit; other tenants are unaffected."""

import asyncio
import time

import httpx
import pytest
from stack_helpers import chat, chat_body

from conftest import TEST_TENANTS, key_of

pytestmark = pytest.mark.engine


def limit_of(tenant: str, name: str) -> int:
    return TEST_TENANTS[tenant][3][name]


def assert_rate_limited(reply: httpx.Response, limit: str) -> None:
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == limit and limit in error["message"]
    assert int(reply.headers["Retry-After"]) >= 1


def test_requests_per_minute(url):
    limit = limit_of("rpm", "requests_per_min")
    statuses, first_refusal = [], None
    for i in range(int(limit * 1.1) + 1):
        reply = chat(url, "rpm", max_tokens=1)
        statuses.append(reply.status_code)
        if reply.status_code == 429 and first_refusal is None:
            first_refusal = i
            assert_rate_limited(reply, "requests_per_min")
    print(f"\nrequests_per_min={limit}: first 429 at request {first_refusal + 1}")
    assert abs(first_refusal - limit) <= 0.05 * limit
    assert set(statuses[first_refusal:]) == {429}
    assert chat(url, "local", max_tokens=1).status_code == 200  # other tenants unaffected


def test_tokens_per_minute_are_settled_after_each_response(url):
    limit = limit_of("tpm", "tokens_per_min")
    used, refused_at = 0, None
    for _ in range(200):
        reply = chat(url, "tpm", max_tokens=8)
        if reply.status_code == 429:
            assert_rate_limited(reply, "tokens_per_min")
            refused_at = used
            break
        assert reply.status_code == 200, reply.text
        used += reply.json()["usage"]["total_tokens"]
    print(f"\ntokens_per_min={limit}: first 429 after {refused_at} tokens")
    assert refused_at is not None and limit <= refused_at <= limit * 1.05


def noise_image_url() -> str:
    """Noise, on which the tiny model's greedy output runs long (a plain colour ends at once)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((28, 28, 3)) * 255).astype("uint8")).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_max_concurrency(url):
    """`limit` streams are admitted and held open; while they run, more requests are refused."""
    limit = limit_of("conc", "max_concurrency")
    long_body = chat_body(max_tokens=1500, stream=True)
    long_body["messages"][0]["content"][1]["image_url"]["url"] = noise_image_url()

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as client:
            held = []
            try:
                for _ in range(limit):
                    stream = client.stream("POST", f"{url}/v1/chat/completions", json=long_body, headers=key_of("conc"))
                    reply = await stream.__aenter__()
                    held.append(stream)
                    assert reply.status_code == 200, await reply.aread()
                return await asyncio.gather(*(
                    client.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=1), headers=key_of("conc"))
                    for _ in range(3)
                ))  # fmt: skip
            finally:
                for stream in held:
                    await stream.__aexit__(None, None, None)

    refused = asyncio.run(scenario())
    assert [r.status_code for r in refused] == [429] * 3, [r.text for r in refused]
    assert_rate_limited(refused[0], "max_concurrency")
    time.sleep(1)  # the closed streams release their slots
    assert chat(url, "conc", max_tokens=1).status_code == 200  # the slots came back


def test_quota_store_down_then_back(stack, stack_env, url):
    """The quota store (redis-server, which `paliserve up` started and recorded in cluster.json)
    is killed by its PID: limited tenants get 503 quota_unavailable with Retry-After, at once;
    tenants without limits are served. Restarted on the same port, directory and config (as an
    operator or a supervisor would), admissions work again with nothing else restarted."""
    import json
    import os
    import signal
    from pathlib import Path

    import psutil

    from serve.redis_server import RedisInfo, find_redis_server, start_redis

    state_file = Path(stack_env["PALISERVE_CACHE"]) / "cluster.json"
    recorded = json.loads(state_file.read_text())["quota_store"]
    info = RedisInfo(**{k: v for k, v in recorded.items() if k != "url"})
    assert chat(url, "conc", max_tokens=1).status_code == 200
    server = psutil.Process(info.pid)
    assert f"127.0.0.1:{info.port}" in " ".join(server.cmdline())
    os.kill(info.pid, signal.SIGKILL)
    server.wait(10)
    try:
        started = time.monotonic()
        down = chat(url, "conc", max_tokens=1)
        took = time.monotonic() - started
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "quota_unavailable"
        assert int(down.headers["Retry-After"]) >= 1
        assert took < 2.0, took  # the store's timeout is 500 ms, not seconds
        assert chat(url, "local", max_tokens=1).status_code == 200  # no limits: no store needed
    finally:
        info.pid = start_redis(find_redis_server(), info)
        state = json.loads(state_file.read_text())
        state["quota_store"] = {**recorded, "pid": info.pid}  # `paliserve down` stops the new one
        state_file.write_text(json.dumps(state, indent=2))
    statuses = [chat(url, "conc", max_tokens=1).status_code for _ in range(3)]
    print(f"\nquota store killed: 503 quota_unavailable in {took * 1000:.0f} ms; restarted: {statuses}")
    assert statuses == [200, 200, 200]
