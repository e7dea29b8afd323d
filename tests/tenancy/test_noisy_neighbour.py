"""A tenant flooding at 10x a quiet tenant's concurrency (and past the engines' admission
capacity, so the fair queue fills) does not push the quiet tenant's p95 TTFT past its SLO.

The quiet tenant streams (TTFT is measured at its first content chunk); the flood sends
non-streaming requests of 32 tokens, so that on these 2 shared cores the engines, not the
client's or the proxy's handling of the flood's SSE chunks, are what the flood saturates."""

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from stack_helpers import chat_body

from conftest import TEST_ADMISSION_CAPACITY, TEST_TENANTS, key_of

pytestmark = pytest.mark.engine

QUIET_CONCURRENCY = 2
FLOOD_CONCURRENCY = 10 * QUIET_CONCURRENCY
QUIET_REQUESTS = 40
MAX_SECONDS = 90
REFUSED_PAUSE_S = 0.1  # keeps a refused flood from spending the 2 cores on refusals alone


async def ttft(client: httpx.AsyncClient, url: str, tenant: str, max_tokens: int) -> float:
    body = chat_body(max_tokens=max_tokens, stream=True)
    started = time.monotonic()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=key_of(tenant)) as reply:
        assert reply.status_code == 200, await reply.aread()
        first = None
        async for line in reply.aiter_lines():
            if line.startswith("data: {") and first is None:
                if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    first = time.monotonic() - started
        return first if first is not None else time.monotonic() - started


async def quiet_run(client, url) -> list[float]:
    queue, samples = asyncio.Queue(), []
    for _ in range(QUIET_REQUESTS):
        queue.put_nowait(None)

    async def worker():
        while not queue.empty():
            queue.get_nowait()
            samples.append(await ttft(client, url, "quiet", max_tokens=8))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(QUIET_CONCURRENCY))), MAX_SECONDS)
    return samples


async def sample_admission(states: list, stop: asyncio.Event, ingress: str) -> None:
    """The gateway's fair-queue state, twice a second, while the flood runs."""
    from ray import serve

    gateway = serve.get_deployment_handle(ingress, app_name="paliserve")
    while not stop.is_set():
        states.append((await gateway.admission_state.remote())["tiny-paligemma"])
        await asyncio.sleep(0.5)


async def measure(url, ingress: str) -> tuple[list[float], list[float], int, list[dict]]:
    limits = httpx.Limits(max_connections=FLOOD_CONCURRENCY + QUIET_CONCURRENCY + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        alone = await quiet_run(client, url)
        stop, flood_done, flood_refused = asyncio.Event(), [], []

        async def flooder():
            body = chat_body(max_tokens=32)
            while not stop.is_set():
                reply = await client.post(f"{url}/v1/chat/completions", json=body, headers=key_of("flood"))
                if reply.status_code == 503 and "Retry-After" in reply.headers:
                    flood_refused.append(1)
                    await asyncio.sleep(REFUSED_PAUSE_S)  # ignores Retry-After, as a flood would
                    continue
                assert reply.status_code == 200, reply.text
                flood_done.append(reply.json()["usage"]["completion_tokens"])

        flood = [asyncio.create_task(flooder()) for _ in range(FLOOD_CONCURRENCY)]
        await asyncio.sleep(2.0)  # the flood fills the engines and the queue
        states: list[dict] = []
        sampler = asyncio.create_task(sample_admission(states, stop, ingress))
        flooded = await quiet_run(client, url)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*flood, sampler), MAX_SECONDS)
        return alone, flooded, (len(flood_done), len(flood_refused)), states


@pytest.mark.xfail(
    strict=False,
    reason="not yet held on the 2-core development box: measured p95 TTFT 116 ms alone, 3113 ms flooded "
    "against a 2000 ms SLO (HAProxy, colocated gateway), while the fair queue kept the quiet tenant at 0 "
    "waiting: the latency is spent outside the fair gate, in the replica process, engine and clients "
    "sharing two cores",
)
def test_quiet_tenant_keeps_its_ttft_slo_under_a_10x_flood(stack, url, ray_client):
    slo_ms = TEST_TENANTS["quiet"][5]
    alone, flooded, (flood_served, flood_refused), states = asyncio.run(measure(url, stack["plan"].ingress_deployment))
    flood_backlog = max(s["waiting"].get("flood", 0) for s in states)
    quiet_backlog = max(s["waiting"].get("quiet", 0) for s in states)
    p95_alone, p95_flooded = (float(np.percentile(s, 95)) * 1e3 for s in (alone, flooded))
    print(
        f"\nquiet tenant p95 TTFT: alone {p95_alone:.0f} ms, under a {FLOOD_CONCURRENCY}-stream flood "
        f"({flood_served} flood requests served, {flood_refused} refused early; admission capacity "
        f"{TEST_ADMISSION_CAPACITY}) {p95_flooded:.0f} ms; SLO {slo_ms} ms; most waiting in the fair queue: "
        f"flood {flood_backlog}, quiet {quiet_backlog}"
    )
    assert len(flooded) == QUIET_REQUESTS  # every quiet request served: none refused for the flood's load
    assert max(s["running"] for s in states) == TEST_ADMISSION_CAPACITY  # the engines really were full
    assert p95_flooded <= slo_ms
