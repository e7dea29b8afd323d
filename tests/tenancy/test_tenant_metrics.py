"""Per-tenant metrics read back from the Ray metrics export port (Prometheus text): tenant and
model labels, request counts by status, tokens, latency histograms, rejections, no keys."""

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stack_helpers import MODEL, chat

pytestmark = pytest.mark.engine
EXPORT_DEADLINE_S = 60  # Ray's metrics agent exports every few seconds


def samples(metrics_url: str) -> tuple[str, list]:
    text = httpx.get(metrics_url, timeout=10).text
    return text, [s for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("ray_paliserve_")]


def value(found, name: str, **labels) -> float:
    return sum(s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_carry_tenant_labels_and_counts(stack, url):
    usages = []
    for _ in range(3):
        reply = chat(url, "metered", max_tokens=4)
        assert reply.status_code == 200
        usages.append(reply.json()["usage"])
    streamed = chat(url, "metered", max_tokens=5, stream=True, stream_options={"include_usage": True})
    assert streamed.status_code == 200
    final = [line for line in streamed.text.splitlines() if '"usage"' in line and '"choices":[]' in line]
    import json

    usages.append(json.loads(final[-1][6:])["usage"])
    assert chat(url, "metered", f"{MODEL}:alice-style").status_code == 403

    metrics_url = f"http://127.0.0.1:{stack['metrics_port']}/metrics"
    tenant = {"tenant": "metered", "model": MODEL}
    deadline = time.monotonic() + EXPORT_DEADLINE_S
    while True:
        text, found = samples(metrics_url)
        ready = value(found, "ray_paliserve_requests_total", status="200", **tenant) >= 4 and value(
            found, "ray_paliserve_rejections_total", tenant="metered", reason="forbidden") >= 1  # fmt: skip
        if ready or time.monotonic() > deadline:
            break
        time.sleep(1.0)

    names = sorted({s.name for s in found})
    assert value(found, "ray_paliserve_requests_total", status="200", **tenant) == 4, names
    assert value(found, "ray_paliserve_requests_total", tenant="metered", status="403") == 1
    assert value(found, "ray_paliserve_rejections_total", tenant="metered", model=f"{MODEL}:alice-style", reason="forbidden") == 1
    assert value(found, "ray_paliserve_prompt_tokens_total", **tenant) == sum(u["prompt_tokens"] for u in usages)
    assert value(found, "ray_paliserve_generation_tokens_total", **tenant) == sum(u["completion_tokens"] for u in usages)
    assert value(found, "ray_paliserve_e2e_request_latency_seconds_count", **tenant) == 4
    assert value(found, "ray_paliserve_time_to_first_token_seconds_count", **tenant) == 1
    assert value(found, "ray_paliserve_time_per_output_token_seconds_count", **tenant) == 1
    assert value(found, "ray_paliserve_requests_in_flight", **tenant) == 0
    assert "sk-test" not in text and "Bearer" not in text
