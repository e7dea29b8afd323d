"""Latency definitions (vLLM's benchmark) on synthetic streamed timelines."""

import json
import math

import numpy as np
import pytest

from loadtests.latency import Timeline, measure, percentile
from loadtests.sse import StreamError, read_stream


def chunk(content="x"):
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]})


def usage(completion, prompt=12):
    return "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})


def test_ttft_itl_e2e_tpot_follow_vllm():
    timeline = Timeline(chunk_times=[0.20, 0.25, 0.27, 0.40], output_tokens=4)
    latency = measure(timeline)
    assert latency.ttft_s == pytest.approx(0.20)
    assert latency.e2e_s == pytest.approx(0.40)
    assert latency.itl_s == pytest.approx((0.05, 0.02, 0.13))
    assert latency.tpot_s == pytest.approx((0.40 - 0.20) / 3)


def test_tpot_uses_usage_tokens_not_chunk_count():
    # two tokens bundled in one chunk: TPOT divides by tokens - 1, ITL keeps the chunk gaps
    latency = measure(Timeline(chunk_times=[0.1, 0.3], output_tokens=3))
    assert latency.tpot_s == pytest.approx(0.1)
    assert latency.itl_s == pytest.approx((0.2,))


def test_single_token_has_no_tpot_and_no_itl():
    latency = measure(Timeline(chunk_times=[0.1], output_tokens=1))
    assert latency.tpot_s is None and latency.itl_s == () and latency.e2e_s == latency.ttft_s


def test_no_chunk_is_a_failed_request():
    assert measure(Timeline(chunk_times=[], output_tokens=0)) is None


def test_stream_timestamps_role_chunk_as_first_token_and_ignores_usage_chunk():
    lines = [
        chunk(""),  # the role chunk: vLLM's benchmark starts TTFT at the first chunk with a choice
        "",
        chunk("ab"),
        ": keep-alive",
        chunk("cd"),
        usage(2),  # carries no token: does not move E2E
        "data: [DONE]",
    ]
    clock_values = iter([10.3, 10.35, 10.5, 10.9])  # read once per data event
    timeline = read_stream(lines, since=10.0, clock=lambda: next(clock_values))
    assert timeline.chunk_times == pytest.approx([0.3, 0.35, 0.5])
    assert timeline.output_tokens == 2 and timeline.prompt_tokens == 12
    latency = measure(timeline)
    assert latency.e2e_s == pytest.approx(0.5)
    assert latency.tpot_s == pytest.approx(0.2)


def test_stream_without_done_or_with_error_fails():
    with pytest.raises(StreamError, match="DONE"):
        read_stream([chunk()], since=0.0, clock=lambda: 1.0)
    error = "data: " + json.dumps({"error": {"message": "engine died", "type": "server_error"}})
    with pytest.raises(StreamError, match="engine died"):
        read_stream([chunk(), error], since=0.0, clock=lambda: 1.0)


def test_stream_accepts_bytes():
    timeline = read_stream([chunk().encode(), b"data: [DONE]"], since=0.0, clock=lambda: 0.5)
    assert timeline.chunk_times == [0.5]


@pytest.mark.parametrize("p", [0, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(p):
    values = [0.3, 12.0, 5.5, 7.25, 1.0, 99.0, 42.0]
    assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 95))
