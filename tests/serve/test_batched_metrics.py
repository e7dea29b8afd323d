"""serve.batched_metrics: what a flush hands to Ray's metric objects (recorded here by replacing
them), and the prometheus_client-style API vLLM's stat logger builds its metrics with. The real
export through Ray's agent and Prometheus is checked by tests/prometheus/test_stack_prometheus.py
and tests/tenancy/test_tenant_metrics.py."""

from __future__ import annotations

import math

import pytest

from serve.batched_metrics import (BatchedCounter, BatchedGauge, BatchedHistogram, VllmCounter, VllmGauge,
                                   VllmHistogram, _Flusher, le_label)  # fmt: skip


class Recorded:
    """Stands in for a `ray.util.metrics` object: keeps what was handed to it."""

    def __init__(self):
        self.calls: list[tuple[str, float, dict]] = []

    def inc(self, value, tags=None):
        self.calls.append(("inc", value, dict(tags or {})))

    def set(self, value, tags=None):
        self.calls.append(("set", value, dict(tags or {})))


def flusher() -> _Flusher:
    f = _Flusher()
    f._thread = object()  # no background thread: the test flushes
    return f


def test_counter_hands_the_sum_of_increments_per_series_once():
    f = flusher()
    counter = BatchedCounter("t_requests", "", ("tenant",), flusher=f)
    counter._ray = ray = Recorded()
    for _ in range(5):
        counter.inc(1, tags={"tenant": "a"})
    counter.inc(2.5, tags={"tenant": "b"})
    counter.inc(0, tags={"tenant": "c"})  # Ray refuses 0; nothing to hand over
    f.flush()
    assert sorted(ray.calls, key=str) == [("inc", 2.5, {"tenant": "b"}), ("inc", 5.0, {"tenant": "a"})]
    f.flush(refresh=True)  # nothing new: a counter hands nothing again
    assert len(ray.calls) == 2


def test_gauge_hands_the_last_value_and_sets_every_series_again_on_refresh():
    f = flusher()
    gauge = BatchedGauge("t_in_flight", "", ("tenant",), flusher=f)
    gauge._ray = ray = Recorded()
    gauge.set(3, tags={"tenant": "a"})
    gauge.set(1, tags={"tenant": "a"})
    gauge.set(None, tags={"tenant": "b"})  # Ray's no-op
    f.flush()
    assert ray.calls == [("set", 1.0, {"tenant": "a"})]
    f.flush()
    assert len(ray.calls) == 1  # unchanged: not set again until a refresh
    f.flush(refresh=True)  # Ray's agent forgets a gauge not set for two export intervals
    assert ray.calls[-1] == ("set", 1.0, {"tenant": "a"})


def test_histogram_exports_prometheus_cumulative_buckets_sum_and_count():
    f = flusher()
    hist = BatchedHistogram("t_latency", "", [0.1, 0.5, 1.0], ("tenant",), flusher=f)
    hist._bucket, hist._sum, hist._count = bucket, total, count = Recorded(), Recorded(), Recorded()
    values = [0.05, 0.1, 0.3, 0.5, 0.7, 2.0]  # 0.1 and 0.5 fall in their own bucket: `le` is <=
    for v in values:
        hist.observe(v, tags={"tenant": "a"})
    f.flush()
    buckets = {c[2]["le"]: c[1] for c in bucket.calls}
    assert buckets == {"0.1": 2, "0.5": 4, "1.0": 5, "+Inf": 6}
    assert all(c[2]["tenant"] == "a" for c in bucket.calls)
    assert total.calls == [("set", pytest.approx(sum(values)), {"tenant": "a"})]  # exact, not bucket midpoints
    assert count.calls == [("set", 6, {"tenant": "a"})]
    hist.observe(0.2, tags={"tenant": "a"})
    f.flush()
    assert {c[2]["le"]: c[1] for c in bucket.calls[-4:]} == {"0.1": 2, "0.5": 5, "1.0": 6, "+Inf": 7}  # cumulative over time


def test_histogram_sets_only_changed_series_until_a_refresh():
    f = flusher()
    hist = BatchedHistogram("t_ttft", "", [1.0], ("tenant",), flusher=f)
    count = Recorded()
    hist._bucket, hist._sum, hist._count = Recorded(), Recorded(), count
    hist.observe(0.5, tags={"tenant": "a"})
    hist.observe(0.5, tags={"tenant": "b"})
    f.flush()
    hist.observe(0.5, tags={"tenant": "a"})
    f.flush()
    assert sorted(c[2]["tenant"] for c in count.calls[:2]) == ["a", "b"]
    assert [c[2]["tenant"] for c in count.calls[2:]] == ["a"]  # only the series that changed
    f.flush(refresh=True)
    assert sorted(c[2]["tenant"] for c in count.calls[-2:]) == ["a", "b"]


def test_le_labels_are_prometheus_clients():
    assert [le_label(b) for b in (0.001, 0.5, 1, 10, math.inf)] == ["0.001", "0.5", "1.0", "10.0", "+Inf"]


def test_one_failing_metric_does_not_stop_the_others():
    f = flusher()
    broken = BatchedCounter("t_broken", "", (), flusher=f)
    fine = BatchedCounter("t_fine", "", (), flusher=f)
    ray = Recorded()
    broken._ray, fine._ray = None, ray  # None.inc raises
    broken.inc(1)
    fine.inc(1)
    f.flush()
    assert ray.calls == [("inc", 1.0, {})]


def test_vllm_api_labels_and_replica_tag():
    """vLLM calls `labels(model_name, engine)` positionally or by name, with non-str values, and
    names like `vllm:num_requests_running`; its Ray wrappers sanitize the name and add `ReplicaId`."""
    f = flusher()
    import serve.batched_metrics as bm

    original, bm.FLUSHER = bm.FLUSHER, f
    try:
        gauge = VllmGauge("vllm:num_requests_running", "running", ["model_name", "engine"], multiprocess_mode="mostrecent")
        counter = VllmCounter("vllm:prompt_tokens", "prompt", ["model_name", "engine"])
        hist = VllmHistogram("vllm:inter_token_latency_seconds", "itl", ["model_name", "engine"], buckets=[0.01, 0.1])
    finally:
        bm.FLUSHER = original
    assert gauge._metric.name == "vllm_num_requests_running"
    assert hist._metric.name == "vllm_inter_token_latency_seconds"
    child = gauge.labels("tiny", 0)
    child.set(3)
    counter.labels(model_name="tiny", engine=0).inc(7)
    counter.labels(model_name="tiny", engine=0).inc(0)  # vLLM's Ray wrapper skips 0 too
    hist.labels("tiny", "0").observe(0.05)
    want = {"model_name": "tiny", "engine": "0", "ReplicaId": ""}
    assert dict(next(iter(gauge._metric._values))) == want
    assert counter._metric._pending == {tuple(sorted(want.items())): 7}
    cumulative, total, count = hist._metric.snapshot(tuple(sorted(want.items())))
    assert cumulative == [("0.01", 0), ("0.1", 1), ("+Inf", 1)] and total == 0.05 and count == 1
    with pytest.raises(ValueError):
        gauge.labels("only-one")
