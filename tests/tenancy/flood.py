"""A noisy neighbour in a process of its own, as it would be on another machine: it does not share
the measuring client's event loop, so the quiet tenant's timings hold only the server's delays.

    python flood.py URL KEY CONCURRENCY MAX_SECONDS BODY_JSON

Sends BODY_JSON (non-streamed) from CONCURRENCY connections until its standard input closes or
MAX_SECONDS pass, pausing REFUSED_PAUSE_S after a refusal (it ignores Retry-After, as a flood
would), then prints {"served": [completion tokens...], "refused": n, "errors": [...],
"most_in_flight": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx

REFUSED_PAUSE_S = 0.1  # keeps a refused flood from spending the 2 cores on refusals alone


async def flood(url: str, key: str, concurrency: int, max_seconds: float, body: dict) -> dict:
    served, refused, errors = [], [], []
    in_flight, most_in_flight = 0, 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(1) else None)
    headers = {"Authorization": f"Bearer {key}"}

    async def flooder(client: httpx.AsyncClient) -> None:
        nonlocal in_flight, most_in_flight
        while not stop.is_set():
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            try:
                reply = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            finally:
                in_flight -= 1
            if reply.status_code == 503 and "Retry-After" in reply.headers:
                refused.append(1)
                await asyncio.sleep(REFUSED_PAUSE_S)
            elif reply.status_code == 200:
                served.append(reply.json()["usage"]["completion_tokens"])
            else:
                errors.append(f"{reply.status_code} {reply.text[:200]}")
                return

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(flooder(client)) for _ in range(concurrency)]
        try:
            await asyncio.wait_for(stop.wait(), max_seconds)
        except asyncio.TimeoutError:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return {"served": served, "refused": len(refused), "errors": errors, "most_in_flight": most_in_flight}


if __name__ == "__main__":
    url, key, concurrency, max_seconds, body = sys.argv[1:6]
    print(json.dumps(asyncio.run(flood(url, key, int(concurrency), float(max_seconds), json.loads(body)))))
