"""`paliserve usage` without a stack: the PromQL it sends, rows, idle time, prices and formats
(Prometheus answers faked; the stack test is tests/tenancy/test_usage.py)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from paliserve import usage
from paliserve.spec import Cost, DeploymentPlan, EngineArgs, Plan


def _plan() -> Plan:
    gpu = DeploymentPlan(name="big", engine_args=EngineArgs(model="m", served_model_name="big"), device="gpu",
                         accelerator="L4", gpus_per_replica=0.5)  # fmt: skip
    cpu = DeploymentPlan(name="small", engine_args=EngineArgs(model="s", served_model_name="small"), device="cpu")
    return Plan(deployments=[gpu, cpu], cost=Cost(per_device_hour={"L4": 0.8}))


ANSWERS = {
    "requests": [({"tenant": "a", "model": "big"}, "3"), ({"tenant": "b", "model": "big:b-style"}, "1"),
                 ({"tenant": "a", "model": "small"}, "2")],
    "prompt_tokens": [({"tenant": "a", "model": "big"}, "300"), ({"tenant": "b", "model": "big:b-style"}, "90"),
                      ({"tenant": "a", "model": "small"}, "20")],
    "image_tokens": [({"tenant": "a", "model": "big"}, "256.00000001")],
    "generated_tokens": [({"tenant": "a", "model": "big"}, "48")],
    "engine_seconds": [({"tenant": "a", "model": "big"}, "5400"), ({"tenant": "b", "model": "big:b-style"}, "1800"),
                       ({"tenant": "a", "model": "small"}, "36")],
}  # fmt: skip


@pytest.fixture
def fake_prometheus(monkeypatch):
    sent = []

    def query(url, promql):
        sent.append(promql)
        if promql.startswith("sum by (deployment)"):
            return [{"metric": {"deployment": "big"}, "value": [0, "10800"]},
                    {"metric": {"deployment": "Gateway"}, "value": [0, "10800"]}]  # fmt: skip
        name = next(n for n, sel in usage.SERIES.items() if sel in promql)
        return [{"metric": labels, "value": [0, value]} for labels, value in ANSWERS.get(name, [])]

    monkeypatch.setattr(usage, "_query", query)
    return sent


def test_rows_prices_and_idle(fake_prometheus):
    report = usage.collect("http://prom", "24h", _plan())
    rows = {(r.tenant, r.model): r for r in report.rows}
    a = rows[("a", "big")]
    assert (a.requests, a.prompt_tokens, a.image_tokens, a.generated_tokens) == (3, 300, 256, 48)
    assert a.gpu_hours == pytest.approx(1.5 * 0.5) and a.cost == pytest.approx(0.75 * 0.8)
    b = rows[("b", "big:b-style")]  # an adapter is priced as its base model
    assert b.gpu_hours == pytest.approx(0.25) and b.cost == pytest.approx(0.2)
    small = rows[("a", "small")]  # a CPU replica is one device; no price for it in the plan
    assert small.gpu_hours == pytest.approx(0.01) and small.cost is None
    idle = rows[(usage.IDLE, "big")]  # 3 replica-hours up, 2 busy
    assert idle.engine_seconds == pytest.approx(3600) and idle.cost == pytest.approx(0.5 * 0.8)
    assert report.rows[-1].tenant == usage.IDLE
    assert report.total().requests == 6 and report.total().cost is None
    # exact growth per series, never increase()'s extrapolation
    assert all("increase(" not in q for q in fake_prometheus)
    assert all("last_over_time(" in q and "offset 24h" in q for q in fake_prometheus[:len(usage.SERIES)])


def test_without_a_plan_there_is_no_price(fake_prometheus):
    report = usage.collect("http://prom", "1h", None, idle=False)
    assert all(r.gpu_hours is None and r.cost is None for r in report.rows)
    assert not any(r.tenant == usage.IDLE for r in report.rows)


def test_formats(fake_prometheus):
    report = usage.collect("http://prom", "7d", _plan())
    table = usage.as_table(report)
    assert "GPU-hours" in table and "cost USD" in table and table.splitlines()[-1].startswith("total")
    data = json.loads(usage.as_json(report))
    assert data["window"] == "7d" and data["total"]["requests"] == 6
    rows = list(csv.DictReader(io.StringIO(usage.as_csv(report))))
    assert rows[0].keys() == set(usage.COLUMNS) and rows[-1]["tenant"] == "total"


@pytest.mark.parametrize("window", ["24", "1 day", "24h; drop"])
def test_window_must_be_a_prometheus_duration(window):
    with pytest.raises(usage.UsageError, match="--since"):
        usage.collect("http://prom", window)
