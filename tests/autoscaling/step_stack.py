"""A cluster of its own for the autoscaling tests: logical GPUs, a real Prometheus, the tiny model
on fractional GPU shares with the Prometheus policy, and a closed-loop HTTP load."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from autoscale.policy_plan import prometheus_policy
from stack_support import chat_body, wait_for
from paliserve.local import tiny_plan
from paliserve.spec import Plan, ReplicaBounds
from serve.cluster import LocalCluster, free_port, wait_until_healthy
from serve.prometheus import LocalPrometheus, find_prometheus

APP = "paliserve"


def step_plan(model_dir, prometheus_url: str, gpu_share: float = 0.5, max_replicas: int = 3) -> Plan:
    """min 1 / max 3 replicas of `gpu_share` of a GPU each; an engine batch of 2 so that a load
    step queues inside the engines, where the policy sees it; short delays and windows."""
    plan = tiny_plan(model_dir, max_num_seqs=2)
    d = plan.deployments[0]
    d.replicas = ReplicaBounds(min=1, initial=1, max=max_replicas)
    d.ray_actor_options.num_gpus = gpu_share
    d.gpus_per_replica = gpu_share
    d.max_ongoing_requests = 32
    d.autoscaling.target_ongoing_requests = 4
    d.autoscaling.upscale_delay_s = 1
    d.autoscaling.downscale_delay_s = 6
    d.autoscaling.policy = prometheus_policy(
        d.name, d.model_name, d.replicas, target_ongoing_requests=4, ttft_slo_ms=2000,
        prometheus_address=prometheus_url, ttft_window_s=15, max_data_age_s=20,
        fetch_interval_s=1, cache_ttl_s=4,
    )  # fmt: skip
    return plan


@dataclass
class Stack:
    cluster: LocalCluster
    prometheus: LocalPrometheus
    plan: Plan

    @property
    def url(self) -> str:
        return self.cluster.info.url

    @property
    def deployment(self) -> str:
        return self.plan.deployments[0].name

    def replica_states(self) -> dict[str, int]:
        from ray import serve

        status = serve.status().applications[APP].deployments[self.deployment]
        return {str(getattr(state, "value", state)): n for state, n in status.replica_states.items()}

    def running(self) -> int:
        return self.replica_states().get("RUNNING", 0)

    def query(self, promql: str) -> list[dict]:
        body = httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        return body["data"]["result"]

    def ray_metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.cluster.info.metrics_port}/metrics", timeout=10).text


@contextmanager
def step_stack(model_dir, num_gpus: float = 1, gpu_share: float = 0.5):
    from serve.app import build_app

    binary = find_prometheus()
    assert binary, "the prometheus binary is missing: apt-get install -y prometheus"
    prometheus = LocalPrometheus(binary, port=free_port(), scrape_interval_s=1)
    plan = step_plan(model_dir, prometheus.url, gpu_share=gpu_share)
    cluster = LocalCluster(http_port=free_port(), num_gpus=num_gpus, metrics_targets=True,
                           env={"RAY_PROMETHEUS_HOST": prometheus.url})  # fmt: skip
    info = cluster.start()
    try:
        prometheus.start(info.temp_dir)
        cluster.connect()
        cluster.serve(build_app(plan))
        wait_until_healthy(info.url, timeout_s=240)
        yield Stack(cluster, prometheus, plan)
    finally:
        prometheus.stop()
        cluster.stop()


@dataclass
class Load:
    """`clients` closed-loop clients until stopped or `limit_s` passes; counts status codes."""

    url: str
    model: str
    clients: int = 12
    max_tokens: int = 128
    limit_s: float = 240
    statuses: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def _client(self) -> None:
        deadline = time.monotonic() + self.limit_s
        body = chat_body(self.model, self.max_tokens)
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    status = client.post(f"{self.url}/v1/chat/completions", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1


