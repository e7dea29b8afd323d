"""Usage showback through the real stack: requests from two tenants, then `paliserve usage`
against the stack's own Prometheus. Requests, prompt, image and generated tokens equal what the
responses reported; engine time is apportioned to both and priced with the plan."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
import yaml
from stack_helpers import MODEL, chat_body

from conftest import PALISERVE, key_of

pytestmark = pytest.mark.engine
TINY_IMAGE_TOKENS = 4  # the tiny model's image: (28 / 14)^2
PRICE = 0.5  # per device-hour of the test plan
DEADLINE_S = 90


def _send(url: str, tenant: str, stream: bool, max_tokens: int) -> dict:
    body = chat_body(MODEL, max_tokens=max_tokens)
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=key_of(tenant), timeout=60)
    assert reply.status_code == 200, reply.text
    if not stream:
        return reply.json()["usage"]
    final = [line for line in reply.text.splitlines() if '"usage"' in line and '"choices":[]' in line]
    return json.loads(final[-1][len("data: "):])["usage"]


def test_usage_report_matches_what_two_tenants_sent(stack, url, session_dir, stack_env):
    from paliserve.usage import IDLE, collect

    plan = stack["plan"].model_copy(deep=True)
    plan.cost.per_device_hour = {"cpu": PRICE}
    plan_file = session_dir / "usage-plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    prometheus = stack["prometheus"]["url"]

    sent = {"showback-a": [(False, 4), (False, 6), (True, 5), (False, 3)], "showback-b": [(True, 8), (False, 2)]}
    started = time.monotonic()
    usages = {tenant: [_send(url, tenant, stream, n) for stream, n in calls] for tenant, calls in sent.items()}
    elapsed = time.monotonic() - started
    expected = {
        tenant: {"requests": len(u), "prompt_tokens": sum(x["prompt_tokens"] for x in u),
                 "image_tokens": TINY_IMAGE_TOKENS * len(u), "generated_tokens": sum(x["completion_tokens"] for x in u)}
        for tenant, u in usages.items()
    }  # fmt: skip

    def measured():
        report = collect(prometheus, "1h", plan)
        rows = {r.tenant: r for r in report.rows if r.tenant in sent}
        return report, {t: {k: getattr(r, k) for k in expected[t]} for t, r in rows.items()}, rows

    deadline = time.monotonic() + DEADLINE_S
    report, counts, rows = measured()
    while (counts != expected or any(r.engine_seconds <= 0 for r in rows.values())) and time.monotonic() < deadline:
        time.sleep(2)  # Ray exports, then Prometheus scrapes (every 5 s)
        report, counts, rows = measured()
    assert counts == expected
    for tenant, row in rows.items():
        assert row.model == MODEL
        assert 0 < row.engine_seconds, row
        assert row.gpu_hours == pytest.approx(row.engine_seconds / 3600)  # a CPU replica counts as one device
        assert row.cost == pytest.approx(row.gpu_hours * PRICE)
    # apportioned shares of one replica's busy time: never more than the time the requests took
    assert sum(r.engine_seconds for r in rows.values()) <= elapsed
    from paliserve.usage import _query, replica_seconds

    assert any(r.tenant == IDLE and r.engine_seconds > 0 for r in report.rows), (
        report.rows, _query(prometheus, replica_seconds("1h")))

    base = [PALISERVE, "usage", "--prometheus", prometheus, "--since", "1h", "--plan", str(plan_file)]
    as_json = subprocess.run([*base, "--json"], env=stack_env, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    cli_rows = {r["tenant"]: r for r in json.loads(as_json.stdout)["rows"] if r["tenant"] in sent}
    assert {t: {k: r[k] for k in expected[t]} for t, r in cli_rows.items()} == expected
    as_csv = subprocess.run([*base, "--csv"], env=stack_env, capture_output=True, text=True, timeout=60)
    assert as_csv.returncode == 0 and as_csv.stdout.startswith("tenant,model,requests,"), as_csv.stderr
    table = subprocess.run(base, env=stack_env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "showback-a" in table.stdout and "GPU-hours" in table.stdout, table.stderr
    print(f"\n$ paliserve usage --prometheus {prometheus} --since 1h --plan plan.yaml\n{table.stdout}")
