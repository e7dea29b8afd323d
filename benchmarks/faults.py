"""Faults under load on a cluster of its own: kill an engine replica, kill the vLLM EngineCore
process under one, kill the gateway replica, scale the engine down from 2 to 1 and redeploy with
streams in flight, then serve colocated and kill an EngineCore process again. Prints one table:
requests sent, failed, their statuses, seconds until 200s again, and requests that hung.

The same stack and scenarios as tests/reliability/test_faults.py (tests/reliability/fault_stack.py).

    flock /tmp/paliserve-engine.lock .venv/bin/python benchmarks/faults.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "reliability"), str(ROOT / "tests")]
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fault_stack import (  # noqa: E402
    GATEWAY,
    drain,
    failure_lines,
    fault_stack,
    kill_engine_process_under_load,
    kill_under_load,
    table,
)


def scenarios():
    """Every fault scenario on one fresh cluster; their Figures, in order."""
    from paliserve.tiny_model import build_tiny_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="paliserve-faults-") as tmp:
        model = build_tiny_model(Path(tmp) / "tiny-paligemma", seed=0)
        with fault_stack(model) as stack:
            rows.append(kill_under_load(stack, stack.engine, "kill 1 of 2 engine replicas"))
            rows.append(kill_engine_process_under_load(stack, "kill EngineCore of 1 of 2 engine replicas (separate gateway)"))
            rows.append(kill_under_load(stack, GATEWAY, "kill the gateway replica"))
            rows.append(drain(stack, stack.with_engine_replicas(1), "scale engine 2 -> 1, streams open", replicas_after=1))
            rows.append(drain(stack, stack.with_max_image_bytes(5 * 1024 * 1024), "redeploy, streams open", replicas_after=1))
            stack.redeploy_colocated(replicas=2)
            rows.append(kill_engine_process_under_load(stack, "kill EngineCore of 1 of 2 replicas (colocated)"))
    return rows


def main() -> int:
    rows = scenarios()
    print(table(rows), flush=True)
    for row in rows:
        print("\n".join(failure_lines(row)), flush=True)
    return 0 if all(r.hung == 0 for r in rows) else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
