"""Issue 8's figures in one table: load held, faults survived, bad inputs tried, requests lost.

Two parts, each on a cluster of its own:
1. the overload and hostile-input tests (pytest, the shared test stack), which record their
   counts in a JSON file (`PALISERVE_FIGURES`, see tests/figures.py);
2. the fault scenarios of benchmarks/faults.py (engine and gateway replicas killed under load,
   scale-down and redeploy with streams open).

    flock /tmp/paliserve-engine.lock .venv/bin/python benchmarks/reliability.py

"Lost" is a request that got no answer, or none in the forms the issue allows (a 200, or a
refusal with Retry-After, or a clean 5xx with a body when a replica is killed under it).
Exit status 0 only when nothing was lost and the tests passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TEST_FILES = [
    "tests/serve/test_overload.py",
    "tests/serve/test_image_fuzz.py",
    "tests/serve/test_openapi_fuzz.py",
    "tests/serve/test_hostile_json.py",
]


def tested_figures() -> tuple[dict[str, dict[str, int]], int]:
    with tempfile.TemporaryDirectory(prefix="paliserve-figures-") as tmp:
        path = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES]
        run = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PALISERVE_FIGURES": str(path)}, capture_output=True, text=True)
        print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:], flush=True)
        return (json.loads(path.read_text()) if path.exists() else {}), run.returncode


def _server_errors(counts: dict[str, int]) -> int:
    return sum(n for status, n in counts.items() if status.isdigit() and int(status) >= 500)


def rows(figures: dict[str, dict[str, int]], faults) -> list[tuple[str, str, str, str, int]]:
    """(part, what, tried, outcome, lost) per line of the table."""
    out = []
    for name, c in figures.items():
        if name.startswith("overload"):
            sent = sum(v for k, v in c.items() if k.startswith("status "))
            refused = c.get("status 503", 0) + c.get("status 429", 0)
            outcome = (f"{c.get('status 200', 0)} served (p95 TTFT {c['p95 TTFT ms']} ms), {refused} refused with "
                       f"Retry-After (p95 {c['p95 refusal ms']} ms)")  # fmt: skip
            out.append(("load held", name, str(sent), outcome, c["lost"] + c["hung"]))
    for f in faults:
        recovery = "" if f.recovery_s is None else f", 200s again after {f.recovery_s:.1f} s"
        statuses = ", ".join(f"{k}: {v}" for k, v in f.statuses.items())
        notes = f"; {f.notes}" if f.last_failure_s is not None else ""  # the dead-engine rows: out of rotation, replaced
        out.append(("fault", f.scenario, str(f.sent), f"{f.failed} failed ({statuses}){recovery}{notes}", f.hung))
    for name, c in figures.items():
        if name.startswith("overload"):
            continue
        # image fuzz counts outcomes (decoded or an InvalidRequest code); the HTTP ones, statuses
        errors = 0 if name == "image fuzz" else _server_errors(c)
        top = ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])[:5])
        out.append(("bad input", name, str(sum(c.values())), f"{errors} answered 5xx; {top}", errors))
    return out


def render(table: list[tuple[str, str, str, str, int]]) -> str:
    header = ("part", "what", "tried", "outcome", "lost or 5xx")
    lines = [header, *((p, w, t, o, str(lost)) for p, w, t, o, lost in table)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    body = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join([*body, f"requests lost (or bad input answered 5xx) in all: {sum(r[4] for r in table)} (must be 0)"])


def main() -> int:
    from faults import scenarios

    figures, tests_status = tested_figures()
    faults = scenarios()
    table = rows(figures, faults)
    print(render(table), flush=True)
    return 0 if tests_status == 0 and sum(r[4] for r in table) == 0 else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
