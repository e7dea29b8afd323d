"""Cross-tenant isolation of cached computation through the real stack, read from vLLM's own
prefix-cache and multimodal-cache counters in the stack's Prometheus: the same image and prompt
from a second tenant hits nothing of the first tenant's caches; the first tenant's repeat does.
A client cannot pick a salt: `cache_salt` in a chat request is refused."""

from __future__ import annotations

import base64
import io
import random
import time

import httpx
import pytest
from stack_helpers import MODEL

from conftest import key_of

pytestmark = pytest.mark.engine
HITS, QUERIES = "ray_vllm_prefix_cache_hits_total", "ray_vllm_prefix_cache_queries_total"
MM_HITS, MM_QUERIES = "ray_vllm_mm_cache_hits_total", "ray_vllm_mm_cache_queries_total"
SCRAPE_DEADLINE_S = 60  # Ray exports every few seconds, Prometheus scrapes every 5 s


def _query(prometheus: str, promql: str) -> list[dict]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
    return reply["data"]["result"]


def _total(prometheus: str, name: str) -> float:
    """The counter summed over the model's engine replicas; 0 before its first increment (Ray's
    counters skip increments of 0, so a series appears only with its first hit)."""
    return sum(float(s["value"][1]) for s in _query(prometheus, f'{name}{{model_name="{MODEL}"}}'))


def _counters(prometheus: str) -> dict[str, float]:
    return {name: _total(prometheus, name) for name in (HITS, QUERIES, MM_HITS, MM_QUERIES)}


def _block_size(prometheus: str) -> int:
    """The engine's KV block size (vLLM's CPU default is 128): a hit needs a full block. The info
    gauge is set once, at the engine's start, and was seen gone stale from an instant query when
    the stack had served for a while: the last value within a day is the engine's setting."""
    from stack_support import wait_for

    info = wait_for(lambda: _query(prometheus, "last_over_time(ray_vllm_cache_config_info[24h])"), SCRAPE_DEADLINE_S, 2,
                    "ray_vllm_cache_config_info in Prometheus")  # fmt: skip
    return int(info[0]["metric"]["block_size"])


def _image(seed: int) -> str:
    from PIL import Image

    rng = random.Random(seed)
    img = Image.new("RGB", (28, 28), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    img.putpixel((rng.randrange(28), rng.randrange(28)), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _send(url: str, tenant: str, text: str, image: str, **extra) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 2, "temperature": 0, **extra,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text},
                                                      {"type": "image_url", "image_url": {"url": image}}]}]}  # fmt: skip
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=key_of(tenant), timeout=60)


def _delta_after(prometheus: str, url: str, tenant: str, text: str, image: str) -> tuple[dict, int]:
    """Send one request and return how much each cache counter moved for it, once Prometheus has
    scraped the request's own queries (the prefix-cache queries grow by its prompt tokens)."""
    before = _counters(prometheus)
    reply = _send(url, tenant, text, image)
    assert reply.status_code == 200, reply.text
    prompt_tokens = reply.json()["usage"]["prompt_tokens"]
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        after = _counters(prometheus)
        if after[QUERIES] - before[QUERIES] >= prompt_tokens and after[MM_QUERIES] > before[MM_QUERIES]:
            break
        assert time.monotonic() < deadline, f"the request's cache queries never reached Prometheus: {before} {after}"
        time.sleep(1)
    time.sleep(6)  # one more scrape: nothing of this request may still be on its way
    after = _counters(prometheus)
    return {k: after[k] - before[k] for k in after}, prompt_tokens


def test_tenants_never_share_prefix_or_multimodal_cache_entries(stack, url):
    prometheus = stack["prometheus"]["url"]
    block = _block_size(prometheus)
    nonce = random.Random().randrange(10**9)
    # long enough for two full KV blocks whatever the tokenizer makes of it; unique per run, so
    # nothing earlier in the session cached it
    text = f"answer en {nonce}"
    while len(text) < 3 * block:  # the tiny tokenizer makes about a token of each character
        text += f" what colour is item {len(text)}"
    image = _image(nonce)

    first, prompt_tokens = _delta_after(prometheus, url, "alice", text, image)
    assert prompt_tokens >= 2 * block, (prompt_tokens, block)
    assert first[HITS] == 0, first  # nobody sent it before

    other, _ = _delta_after(prometheus, url, "carol", text, image)
    repeat, _ = _delta_after(prometheus, url, "alice", text, image)
    print(f"\nblock_size={block} prompt_tokens={prompt_tokens}; prefix-cache hit tokens: carol after alice "
          f"{other[HITS]:g} (of {other[QUERIES]:g} queried), alice's repeat {repeat[HITS]:g} (of {repeat[QUERIES]:g}); "
          f"mm-cache hits: carol {other[MM_HITS]:g}, alice's repeat {repeat[MM_HITS]:g}")
    assert other[QUERIES] >= prompt_tokens and other[HITS] == 0, other
    assert other[MM_QUERIES] >= 1 and other[MM_HITS] == 0, other
    assert repeat[HITS] >= block, repeat  # caching is kept within a tenant
    assert repeat[MM_HITS] >= 1, repeat


def test_a_client_cannot_choose_its_cache_salt(url):
    reply = _send(url, "carol", "caption en", _image(1), cache_salt="anything")
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "cache_salt"
