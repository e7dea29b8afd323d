"""Counters, gauges and histograms kept in the replica's process and handed to Ray's metrics
pipeline in batches, under the names Ray's own metrics export (`ray_<name>`, `_total`, `_bucket`).

Hand-written because Ray's pipeline charges every observation twice: the replica's `record()`
(C++ through Cython, releasing and retaking the GIL each time), and Ray's metrics agent, which
replays each histogram observation one by one into OpenTelemetry from the exported bucket counts
(`OpenTelemetryMetricRecorder.record_histogram_aggregated_batch`, ray-project/ray#64852). vLLM
observes about 30 histogram values per request (inter-token latency once per generated token)
and sets its gauges on every engine step; at concurrency 16 on 2 cores that was a tenth of the
serving path's CPU. Here an observation is a list increment under a lock; a thread hands the
changes to Ray every `FLUSH_INTERVAL_S`:

- a counter's increments since the last flush as one `inc`;
- a gauge's last value;
- a histogram as the series Prometheus's exposition has: cumulative `<name>_bucket{le=...}`,
  `<name>_sum` and `<name>_count`, each a Ray gauge. PromQL (`rate`, `histogram_quantile`) reads
  them as it reads Ray's histograms; their sums are exact where Ray's agent rebuilds them from
  bucket midpoints. Their exposition says `# TYPE gauge`.

Ray's agent drops a gauge that is not set again within two export intervals, so every series is
set again once per export interval even when nothing changed.

`BatchedStatLogger` is vLLM's Prometheus stat logger on these classes (what
`vllm.v1.metrics.ray_wrappers.RayPrometheusStatLogger` is on Ray's).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import regex as re
from ray.util import metrics as ray_metrics

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
REPLICA_TAG = "ReplicaId"  # the tag vLLM's Ray stat logger adds to every vLLM metric

Key = tuple[tuple[str, str], ...]


def _key(tags: Mapping[str, str] | None) -> Key:
    return tuple(sorted(tags.items())) if tags else ()


def le_label(bound: float) -> str:
    """Prometheus's text for a bucket bound (`0.5`, `1.0`, `+Inf`), as its clients write it."""
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


class _Flusher:
    """One thread per process hands every batched metric's changes to Ray."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S):
        self.interval_s = interval_s
        self._metrics: list[_Batched] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_refresh = 0.0

    def add(self, metric: _Batched) -> None:
        with self._lock:
            self._metrics.append(metric)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="paliserve-metrics-flush", daemon=True)
                self._thread.start()

    def refresh_interval_s(self) -> float:
        """Ray's export interval (the agent keeps a gauge for two of them)."""
        try:
            import ray

            return max(ray._config.metrics_report_interval_ms(), 1000) / 1000
        except Exception:  # not in a Ray worker (unit tests): Ray's default
            return 10.0

    def flush(self, refresh: bool = False) -> None:
        with self._lock:
            metrics = list(self._metrics)
        for metric in metrics:
            try:
                metric.flush(refresh)
            except Exception:  # one metric's failure must not stop the others' export
                logger.exception("could not export metric %s", metric.name)

    def _run(self) -> None:
        refresh_s = self.refresh_interval_s()
        while True:
            time.sleep(self.interval_s)
            now = time.monotonic()
            refresh = now - self._last_refresh >= refresh_s / 2
            if refresh:
                self._last_refresh = now
            self.flush(refresh)


FLUSHER = _Flusher()


class _Batched:
    name: str

    def flush(self, refresh: bool) -> None:
        raise NotImplementedError


class BatchedCounter(_Batched):
    """`ray.util.metrics.Counter`'s `inc(value, tags)`, handed to Ray once per flush."""

    def __init__(self, name: str, description: str = "", tag_keys: Sequence[str] = (), flusher: _Flusher | None = None):
        self.name = name
        self._ray = ray_metrics.Counter(name, description, tag_keys=tuple(tag_keys))
        self._pending: dict[Key, float] = {}
        self._lock = threading.Lock()
        (flusher or FLUSHER).add(self)

    def inc(self, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None:
        if value <= 0:
            return
        self.inc_key(_key(tags), value)

    def inc_key(self, key: Key, value: float) -> None:
        with self._lock:
            self._pending[key] = self._pending.get(key, 0.0) + value

    def flush(self, refresh: bool) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for key, value in pending.items():
            self._ray.inc(value, tags=dict(key))


class BatchedGauge(_Batched):
    """`ray.util.metrics.Gauge`'s `set(value, tags)`: the last value, handed to Ray once per flush."""

    def __init__(self, name: str, description: str = "", tag_keys: Sequence[str] = (), flusher: _Flusher | None = None):
        self.name = name
        self._ray = ray_metrics.Gauge(name, description, tag_keys=tuple(tag_keys))
        self._values: dict[Key, float] = {}
        self._changed: set[Key] = set()
        self._lock = threading.Lock()
        (flusher or FLUSHER).add(self)

    def set(self, value: float | None, tags: Mapping[str, str] | None = None) -> None:
        if value is not None:
            self.set_key(_key(tags), float(value))

    def set_key(self, key: Key, value: float) -> None:
        with self._lock:
            self._values[key] = value
            self._changed.add(key)

    def flush(self, refresh: bool) -> None:
        with self._lock:
            keys = set(self._values) if refresh else self._changed
            values = {k: self._values[k] for k in keys}
            self._changed = set()
        for key, value in values.items():
            self._ray.set(value, tags=dict(key))


class BatchedHistogram(_Batched):
    """`ray.util.metrics.Histogram`'s `observe(value, tags)`, exported as Prometheus's
    cumulative `_bucket{le}`, `_sum` and `_count` series (Ray gauges)."""

    def __init__(self, name: str, description: str = "", boundaries: Sequence[float] = (),
                 tag_keys: Sequence[str] = (), flusher: _Flusher | None = None):  # fmt: skip
        self.name = name
        self.bounds = sorted(float(b) for b in boundaries)
        self._le = [le_label(b) for b in self.bounds] + ["+Inf"]
        tag_keys = tuple(tag_keys)
        self._bucket = ray_metrics.Gauge(f"{name}_bucket", description, tag_keys=(*tag_keys, "le"))
        self._sum = ray_metrics.Gauge(f"{name}_sum", description, tag_keys=tag_keys)
        self._count = ray_metrics.Gauge(f"{name}_count", description, tag_keys=tag_keys)
        # per series: observations per bucket (not cumulative; the last is +Inf's), then their sum
        self._series: dict[Key, list[float]] = {}
        self._changed: set[Key] = set()
        self._lock = threading.Lock()
        (flusher or FLUSHER).add(self)

    def observe(self, value: float, tags: Mapping[str, str] | None = None) -> None:
        self.observe_key(_key(tags), value)

    def observe_key(self, key: Key, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)  # the first bound >= value: Prometheus's `le`
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(self.bounds) + 2)
            series[index] += 1
            series[-1] += value
            self._changed.add(key)

    def snapshot(self, key: Key) -> tuple[list[tuple[str, float]], float, float]:
        """(cumulative counts by `le`, sum, count) of one series, as Prometheus exposes them."""
        with self._lock:
            series = list(self._series[key])
        cumulative, running = [], 0.0
        for le, count in zip(self._le, series[:-1]):
            running += count
            cumulative.append((le, running))
        return cumulative, series[-1], running

    def flush(self, refresh: bool) -> None:
        with self._lock:
            keys = list(self._series) if refresh else list(self._changed)
            self._changed = set()
        for key in keys:
            cumulative, total, count = self.snapshot(key)
            tags = dict(key)
            for le, value in cumulative:
                self._bucket.set(value, tags={**tags, "le": le})
            self._sum.set(total, tags=tags)
            self._count.set(count, tags=tags)


# ---- vLLM's stat logger on the batched classes -------------------------------------------------
# vLLM builds its metrics with prometheus_client's API (`Gauge(name, documentation, labelnames)`,
# `.labels(...)`, `.set/.inc/.observe`); these wrappers give it that API, with the name sanitized
# and the `ReplicaId` tag added as vLLM's Ray wrappers do, so the exported series are the same.


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica
        return ""


def _sanitized(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class _Labelled:
    def __init__(self, metric, labelnames: Iterable[str] | None):
        self._metric = metric
        self._labelnames = tuple(labelnames or ())
        self._key: Key = _key({REPLICA_TAG: _replica_id()})

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return (*self._labelnames, REPLICA_TAG)

    def labels(self, *values, **named):
        if values:
            if len(values) != len(self._labelnames):
                raise ValueError(f"expected {len(self._labelnames)} label values, got {len(values)}")
            named.update(zip(self._labelnames, values))
        child = object.__new__(type(self))
        child.__dict__.update(self.__dict__)
        child._key = _key({**{k: str(v) for k, v in named.items()}, **dict(self._key)})
        return child


class VllmGauge(_Labelled):
    def __init__(self, name: str, documentation: str | None = "", labelnames: Iterable[str] | None = None,
                 multiprocess_mode: str | None = ""):  # fmt: skip
        del multiprocess_mode  # every replica's series carries its ReplicaId
        labelnames = tuple(labelnames or ())
        super().__init__(BatchedGauge(_sanitized(name), documentation or "", (*labelnames, REPLICA_TAG)), labelnames)

    def set(self, value: float) -> None:
        self._metric.set_key(self._key, float(value))

    def set_to_current_time(self) -> None:
        self.set(time.time())


class VllmCounter(_Labelled):
    def __init__(self, name: str, documentation: str | None = "", labelnames: Iterable[str] | None = None):
        labelnames = tuple(labelnames or ())
        super().__init__(BatchedCounter(_sanitized(name), documentation or "", (*labelnames, REPLICA_TAG)), labelnames)

    def inc(self, value: float = 1.0) -> None:
        if value > 0:
            self._metric.inc_key(self._key, value)


class VllmHistogram(_Labelled):
    def __init__(self, name: str, documentation: str | None = "", labelnames: Iterable[str] | None = None,
                 buckets: Sequence[float] | None = None):  # fmt: skip
        labelnames = tuple(labelnames or ())
        metric = BatchedHistogram(_sanitized(name), documentation or "", buckets or (), (*labelnames, REPLICA_TAG))
        super().__init__(metric, labelnames)

    def observe(self, value: float) -> None:
        self._metric.observe_key(self._key, value)


def batched_stat_logger():
    """vLLM's Prometheus stat logger class on the batched metrics (imported late: vLLM is heavy)."""
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    class BatchedStatLogger(RayPrometheusStatLogger):
        _gauge_cls = VllmGauge
        _counter_cls = VllmCounter
        _histogram_cls = VllmHistogram

    return BatchedStatLogger
