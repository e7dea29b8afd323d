"""`paliserve up` (the shared stack) runs a Prometheus that scrapes Ray through its
service-discovery file, and records it in the state file."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.engine


def _query(url: str, promql: str) -> list[dict]:
    return httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()["data"]["result"]


def test_up_starts_prometheus_scraping_the_engines(stack, openai_client):
    prometheus = stack["prometheus"]
    assert prometheus and prometheus["url"].startswith("http://127.0.0.1:")
    openai_client.models.list()
    deadline = time.monotonic() + 60
    found: list = []
    while time.monotonic() < deadline and not found:
        found = _query(prometheus["url"], 'ray_serve_num_http_requests_total') and _query(
            prometheus["url"], '{__name__=~"ray_vllm_.+"}')
        time.sleep(1)
    assert found, "no Ray Serve or vLLM series in Prometheus after a minute"
    targets = _query(prometheus["url"], 'up{job="ray"}')
    assert targets and all(t["value"][1] == "1" for t in targets)
