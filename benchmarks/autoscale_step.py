"""Load step against the Prometheus autoscaling policy: time to new replicas serving, SLO attainment.

Runs the e2e test's stack (tests/autoscaling/step_stack.py: its own Ray cluster with 1 logical
GPU, half a GPU per tiny-model replica, min 1 / max 3, a real Prometheus), then a closed loop
of streaming clients. Prints, from the moment the load starts: the first scale-up decision
(seen in Prometheus), the second replica RUNNING, the second replica's engine busy, and the
share of requests whose TTFT met the SLO before and after the new replica served.

    flock /tmp/paliserve-engine.lock .venv/bin/python benchmarks/autoscale_step.py [--clients 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "autoscaling"), str(ROOT / "tests")]  # the same stack as the e2e test

from step_stack import chat_body, step_stack, wait_for  # noqa: E402


class StreamingLoad:
    """Closed-loop streaming clients; records (start, TTFT or None on error) per request."""

    def __init__(self, url: str, model: str, clients: int, max_tokens: int):
        self.url, self.body = url, chat_body(model, max_tokens, stream=True)
        self.samples: list[tuple[float, float | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def _client(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                ttft = None
                try:
                    with client.stream("POST", f"{self.url}/v1/chat/completions", json=self.body) as reply:
                        for line in reply.iter_lines():
                            if ttft is None and line.startswith("data: {") and '"content"' in line:
                                ttft = time.monotonic() - start
                        if reply.status_code != 200:
                            ttft = None
                except httpx.HTTPError:
                    ttft = None
                self.samples.append((start, ttft))


def attainment(samples, slo_s: float, since: float, until: float) -> dict:
    window = [ttft for start, ttft in samples if since <= start < until]
    met = sum(1 for ttft in window if ttft is not None and ttft <= slo_s)
    ttfts = sorted(t for t in window if t is not None)
    return {
        "requests": len(window),
        "errors": sum(1 for t in window if t is None),
        "slo_attainment": round(met / len(window), 3) if window else None,
        "ttft_p95_ms": round(ttfts[int(0.95 * (len(ttfts) - 1))] * 1e3, 1) if ttfts else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--hold-s", type=float, default=20, help="load kept on after the new replica serves")
    args = parser.parse_args()

    from paliserve.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="autoscale-step-") as tmp, step_stack(build_tiny_model(Path(tmp) / "tiny")) as stack:
        d = stack.plan.deployments[0]
        slo_s = d.autoscaling.policy.policy_kwargs["ttft_slo_ms"] / 1e3
        assert httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body(d.model_name, 8), timeout=60).status_code == 200
        wait_for(lambda: stack.query(f'ray_vllm_kv_cache_usage_perc{{model_name="{d.model_name}"}}'), 60, what="engine metrics")

        load = StreamingLoad(stack.url, d.model_name, args.clients, args.max_tokens)
        step = time.monotonic()
        load.start()
        marks: dict[str, float] = {}
        desired_query = f'ray_paliserve_autoscaler_desired_replicas{{deployment="{stack.deployment}"}}'
        busy_query = f'count(ray_vllm_num_requests_running{{model_name="{d.model_name}"}} > 0)'
        deadline = step + 240
        while time.monotonic() < deadline and "second_replica_busy" not in marks:
            now = time.monotonic() - step
            if "decision" not in marks and any(float(r["value"][1]) > 1 for r in stack.query(desired_query)):
                marks["decision"] = now
            if "second_replica_running" not in marks and stack.running() >= 2:
                marks["second_replica_running"] = now
            if "second_replica_running" in marks and any(float(r["value"][1]) >= 2 for r in stack.query(busy_query)):
                marks["second_replica_busy"] = now
            time.sleep(0.5)
        time.sleep(args.hold_s)
        load.stop()
        end = time.monotonic()
        served = step + marks.get("second_replica_busy", end - step)
        result = {
            "clients": args.clients,
            "max_tokens": args.max_tokens,
            "ttft_slo_ms": slo_s * 1e3,
            "seconds_from_step": {k: round(v, 1) for k, v in marks.items()},
            "replicas_at_end_of_step": stack.replica_states(),
            "before_new_replica": attainment(load.samples, slo_s, step, served),
            "after_new_replica": attainment(load.samples, slo_s, served, end),
            "whole_step": attainment(load.samples, slo_s, step, end),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
