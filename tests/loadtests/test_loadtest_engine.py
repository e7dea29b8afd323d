"""Real Locust runs against the shared stack (tiny model, CPU): the report agrees with Locust's
own CSV, and the exit code follows the SLO outcome. Two short runs, about 35 s in all."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from loadtests.locust_csv import read_stats
from loadtests.records import read_records
from loadtest_plans import plan_with, tenant

pytestmark = pytest.mark.engine
KINDS = {"TTFT": "ttft_ms", "TPOT": "tpot_ms", "ITL": "itl_ms", "E2E": "e2e_ms"}


def locust_bucket(ms: float) -> int:
    """How Locust rounds a response time before counting it (locust.stats)."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


def locust_percentile(values_ms: list[float], p: float) -> int:
    """Locust's percentile of the bucketed times (nearest rank counted from the top)."""
    ordered = sorted(locust_bucket(v) for v in values_ms)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)]


def raw_values(records, tenant_name: str, kind: str) -> list[float]:
    ok = [r for r in records if r.tenant == tenant_name and r.ok]
    if kind == "ITL":
        return [gap * 1e3 for r in ok for gap in r.itl_s]
    attr = {"TTFT": "ttft_s", "TPOT": "tpot_s", "E2E": "e2e_s"}[kind]
    return [getattr(r, attr) * 1e3 for r in ok if getattr(r, attr) is not None]


def loadtest(plan, tmp_path, url, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", str(plan_file), "--host", url, "--report", str(report), *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert (report / "summary.json").exists(), proc.stdout + proc.stderr
    return proc, json.loads((report / "summary.json").read_text())


def assert_summary_agrees_with_locust_csv(report, summary) -> None:
    stats = read_stats(report / "locust")
    records = read_records(report / "requests.jsonl")
    for name, t in summary["tenants"].items():
        post = stats[("POST", name)]
        assert int(post["Request Count"]) == t["all"]["requests"] == sum(r.tenant == name for r in records)
        assert int(post["Failure Count"]) == t["all"]["failures"]
        for kind, key in KINDS.items():
            ours, row = t["all"][key], stats[(kind, name)]
            values = raw_values(records, name, kind)
            assert int(row["Request Count"]) == ours["count"] == len(values)
            assert float(row["Average Response Time"]) == pytest.approx(ours["mean"], abs=1e-3)
            for p, column in ((0.5, "50%"), (0.95, "95%"), (0.99, "99%")):
                assert int(row[column]) == locust_percentile(values, p), (kind, name, column)
            # the summary's p95 is numpy's interpolated percentile of the same values: it differs
            # from Locust's only by Locust's bucket rounding and its nearest-rank choice
            ordered = sorted(values)
            rank = min(int(len(ordered) * 0.95), len(ordered) - 1)
            low = int(0.95 * (len(ordered) - 1))
            slack = ordered[rank] - ordered[low] + abs(locust_bucket(ordered[rank]) - ordered[rank])
            assert abs(ours["p95"] - float(row["95%"])) <= slack + 1e-3, (kind, name)


def test_impossible_slo_fails_naming_the_tenant_and_report_matches_csv(url, tiny_model_dir, tmp_path):
    plan = plan_with(tiny_model_dir, tenant("roomy", 60000, 30000, concurrency=2), tenant("impossible", 1, 30000, concurrency=1))
    proc, summary = loadtest(plan, tmp_path, url, "--duration", "12")
    assert proc.returncode == 1, proc.stderr
    assert "FAIL tenant impossible: TTFT p95" in proc.stderr
    assert "FAIL tenant roomy" not in proc.stderr
    assert summary["tenants"]["roomy"]["slo"]["met"] and not summary["tenants"]["impossible"]["slo"]["met"]
    assert summary["tenants"]["roomy"]["all"]["requests"] > summary["tenants"]["impossible"]["all"]["requests"] > 0
    assert summary["tenants"]["roomy"]["all"]["failures"] == 0
    assert_summary_agrees_with_locust_csv(tmp_path / "report", summary)
    for png in ("latency_over_time.png", "slo_attainment.png", "predicted_vs_measured.png"):
        assert (tmp_path / "report" / png).stat().st_size > 0


def test_generous_slo_passes_in_open_loop_step(url, tiny_model_dir, tmp_path):
    plan = plan_with(tiny_model_dir, tenant("roomy", 60000, 30000, concurrency=2, peak=4, request_rate=4.0))
    proc, summary = loadtest(plan, tmp_path, url, "--duration", "10", "--mode", "open", "--shape", "step")
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stderr
    stages = {row["stage"]: row for row in summary["by_stage"]}
    assert stages["target"]["requests"] > 0 and stages["peak"]["requests"] > 0
    assert_summary_agrees_with_locust_csv(tmp_path / "report", summary)
