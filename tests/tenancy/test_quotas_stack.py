"""Quotas through the real stack: 429s begin within 5% of each configured limit, with
Retry-After and a message naming the limit; other tenants are unaffected."""

import asyncio

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


def test_max_concurrency(url):
    limit = limit_of("conc", "max_concurrency")

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            body = chat_body(max_tokens=400)
            return await asyncio.gather(*(
                client.post(f"{url}/v1/chat/completions", json=body, headers=key_of("conc")) for _ in range(limit + 3)
            ))  # fmt: skip

    replies = asyncio.run(burst())
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * limit + [429] * 3, statuses
    assert_rate_limited(next(r for r in replies if r.status_code == 429), "max_concurrency")
    assert chat(url, "conc", max_tokens=1).status_code == 200  # the slots came back
