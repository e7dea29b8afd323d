"""Planner validation on this machine: profile the tiny model, plan the local spec with that
profile, serve the plan, load it with `python -m loadtests`, and print predicted vs measured.

    .venv/bin/python benchmarks/loadtest_validation.py [--duration 30] [--profile FILE] [--out DIR]

The issue's target is an error within 15% for throughput and p95 TTFT; this prints what it is.
Everything runs on 127.0.0.1; the stack is stopped with `paliserve down` (the tree it started).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PALISERVE = str(Path(sys.executable).with_name("paliserve"))
SPEC = REPO / "paliserve" / "defaults" / "local-cpu.yaml"
TARGET_ERROR_PCT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(what: str, cmd: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    print(f"== {what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0, 1):
        sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--profile", type=Path, help="reuse a profile from `paliserve profile`")
    parser.add_argument("--out", type=Path, default=None, help="keep plan, profile and report here")
    parser.add_argument("--shape", default="steady")
    parser.add_argument("--mode", default="closed")
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="paliserve-validation-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PALISERVE_CACHE": str(work / "cache"), "VLLM_HOST_IP": "127.0.0.1",
           "RAY_USAGE_STATS_ENABLED": "0", "PALISERVE_TINY_MODEL": str(work / "tiny-paligemma")}  # fmt: skip
    step("tiny model", [PALISERVE, "tiny-model", env["PALISERVE_TINY_MODEL"]], env, 300)
    profile = args.profile
    if profile is None:
        profile = work / "profile.yaml"
        step("profile", [PALISERVE, "profile", "--checkpoint", env["PALISERVE_TINY_MODEL"], "--model", "tiny-paligemma",
                         "-o", str(profile)], env, 600)  # fmt: skip
    plan = work / "plan.yaml"
    step("plan", [PALISERVE, "plan", str(SPEC), "--profile", str(profile), "-o", str(plan)], env, 120)
    port = free_port()
    step("up", [PALISERVE, "up", "--detach", "--plan", str(plan), "--port", str(port)], env, 600)
    try:
        report = work / "report"
        test = step("loadtest", [sys.executable, "-m", "loadtests", str(plan), "--host", f"http://127.0.0.1:{port}",
                                 "--duration", str(args.duration), "--report", str(report), "--shape", args.shape,
                                 "--mode", args.mode], env, int(args.duration) + 300)  # fmt: skip
    finally:
        step("down", [PALISERVE, "down"], env, 180)
    print(test.stderr, file=sys.stderr)
    print_comparison(json.loads((report / "summary.json").read_text()), work)


def print_comparison(summary: dict, work: Path) -> None:
    rows = []
    for name, t in summary["tenants"].items():
        at = t["at_target"]
        rows.append((f"tenant {name} TTFT p95 ms", t["predicted"]["ttft_p95_ms"], at["ttft_ms"]["p95"], t["error_pct"]["ttft_p95"]))
        rows.append((f"tenant {name} TPOT mean ms", t["predicted"]["tpot_ms"], at["tpot_ms"]["mean"], t["error_pct"]["tpot_mean"]))
    for name, d in summary["deployments"].items():
        rows.append((f"deployment {name} tokens/s per replica", d["predicted"]["tokens_per_s"],
                     d["at_target"]["output_tokens_per_s_per_replica"], d["error_pct"]["tokens_per_s"]))  # fmt: skip
    print(f"{'quantity':45} {'predicted':>10} {'measured':>10} {'error':>9}  within {TARGET_ERROR_PCT:g}%")
    for label, predicted, measured, err in rows:
        ok = "n/a" if err is None else ("yes" if abs(err) <= TARGET_ERROR_PCT else "no")
        print(f"{label:45} {predicted:10.2f} {measured or 0:10.2f} {err if err is not None else float('nan'):+8.1f}%  {ok}")
    print(f"SLO verdict: {'PASS' if summary['passed'] else 'FAIL ' + '; '.join(summary['failures'])}")
    print(f"files: {work}")


if __name__ == "__main__":
    main()
