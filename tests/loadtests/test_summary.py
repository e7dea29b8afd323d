"""Summary and report from synthetic request records: verdicts, attainment, prediction errors."""

import json

import pytest

from loadtests.records import Record, RecordWriter, read_records
from loadtests.report import write_report
from loadtests.summary import error_pct, summarize
from loadtests.traffic import profile_from_plan
from loadtest_plans import plan_with, tenant


def record(name, elapsed, ttft, tpot, tokens=9, ok=True, stage="target", level=1.0):
    e2e = ttft + tpot * (tokens - 1)
    return Record(name, 1000.0 + elapsed, elapsed, stage, level, ok=ok, status=200 if ok else 503,
                  ttft_s=ttft if ok else None, e2e_s=e2e if ok else None, tpot_s=tpot if ok else None,
                  itl_s=[tpot] * (tokens - 1) if ok else [], output_tokens=tokens if ok else None)  # fmt: skip


@pytest.fixture
def profile(tmp_path):
    plan = plan_with("/m", tenant("fast", 500, 50, concurrency=2, predicted_ttft_ms=100, predicted_tpot_ms=10),
                     tenant("strict", 50, 50, concurrency=2))  # fmt: skip
    return profile_from_plan(plan, {}, "closed", "step", 20, str(tmp_path / "r.jsonl"))


def test_verdicts_name_the_tenant_and_metric_that_missed(profile):
    records = [record("fast", i * 0.5, 0.120, 0.011) for i in range(20)]
    records += [record("strict", i * 0.5, 0.200 if i % 2 else 0.030, 0.005) for i in range(20)]
    summary = summarize(profile, records, profile.schedule())
    assert not summary["passed"]
    assert summary["tenants"]["fast"]["slo"]["met"]
    assert summary["failures"] == ["tenant strict: TTFT p95 200.0 ms > SLO 50 ms"]
    assert summary["tenants"]["strict"]["slo"]["attainment"] == 0.5


def test_prediction_errors_and_throughput(profile):
    records = [record("fast", i * 0.5, 0.120, 0.011) for i in range(20)]  # 20 requests in 10 s of target
    records += [record("strict", i * 0.5, 0.030, 0.005) for i in range(20)]
    summary = summarize(profile, records, profile.schedule())
    fast = summary["tenants"]["fast"]
    assert fast["error_pct"] == {"ttft_p95": 20.0, "tpot_mean": 10.0}
    assert fast["at_target"]["requests_per_s"] == 2.0
    assert fast["at_target"]["output_tokens_per_s"] == 18.0
    deployment = summary["deployments"]["tiny-paligemma"]
    assert deployment["at_target"]["output_tokens_per_s_per_replica"] == 36.0
    assert deployment["error_pct"]["tokens_per_s"] == error_pct(36.0, 500.0) == -92.8
    assert deployment["max_sustainable"]["error_pct"] is None  # far below the planned max concurrency
    assert "lower bound" in deployment["max_sustainable"]["note"]


def test_only_the_target_stage_decides_and_failures_count(profile):
    records = [record("fast", i, 0.120, 0.011) for i in range(10)]
    records += [record("fast", 10 + i, 5.0, 0.011, stage="peak") for i in range(10)]  # slow at peak: ignored
    records += [record("strict", i, 0.010, 0.005) for i in range(9)] + [record("strict", 9, 0, 0, ok=False)]
    summary = summarize(profile, records, profile.schedule())
    assert summary["tenants"]["fast"]["slo"]["met"]
    assert summary["tenants"]["fast"]["all"]["requests"] == 20
    assert summary["failures"] == ["tenant strict: error rate 10.0% > 1.0% (1 of 10 failed)"]
    stages = {row["stage"]: row for row in summary["by_stage"]}
    assert stages["peak"]["requests"] == 10 and stages["peak"]["ttft_p95_ms"] == pytest.approx(5000)


def test_a_tenant_without_requests_fails(profile):
    summary = summarize(profile, [record("fast", 1, 0.1, 0.01)], profile.schedule())
    assert "tenant strict: no successful request at the target load" in summary["failures"]


def test_records_round_trip_and_report_files(profile, tmp_path):
    writer = RecordWriter(tmp_path / "r.jsonl")
    records = [record("fast", i * 0.5, 0.12, 0.011) for i in range(20)] + [record("strict", 1, 0.01, 0.005)]
    for r in records:
        writer.write(r)
    writer.close()
    assert read_records(tmp_path / "r.jsonl") == records
    summary = summarize(profile, records, profile.schedule())
    files = write_report(tmp_path / "report", summary, records, [(1000.0, 4), (1010.0, 8)], {}, 1000.0)
    assert {f.name for f in files} == {"summary.json", "index.html", "latency_over_time.png",
                                       "slo_attainment.png", "predicted_vs_measured.png"}  # fmt: skip
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == summary
    page = (tmp_path / "report" / "index.html").read_text()
    assert "strict" in page and "PASS" in page
