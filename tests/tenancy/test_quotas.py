"""Quota windows: exact limits, sliding expiry, token settlement, concurrency and Retry-After."""

import pytest

from paliserve.spec import TenantLimits
from serve.tenancy.quotas import WINDOW_S, QuotaLedger


def ledger(**limits):
    return QuotaLedger({"t": TenantLimits(**limits), "other": TenantLimits(requests_per_min=1)})


def test_requests_per_min_refuses_exactly_the_request_over_the_limit():
    q = ledger(requests_per_min=100)
    results = [q.acquire("t", now=i * 0.1) for i in range(101)]
    for i in range(100):
        q.settle("t", 0, now=i * 0.1)
    assert all(r is None for r in results[:100])
    refused = results[100]
    assert refused.limit == "requests_per_min" and "100 requests per minute" in refused.message
    assert refused.retry_after_s == pytest.approx(WINDOW_S - 10.0)


def test_the_window_slides():
    q = ledger(requests_per_min=2)
    assert q.acquire("t", 0.0) is None and q.acquire("t", 30.0) is None
    assert q.acquire("t", 59.9) is not None
    assert q.acquire("t", 60.0) is None  # the first left the window
    assert q.acquire("t", 60.1) is not None


def test_refusals_do_not_count_and_tenants_are_separate():
    q = ledger(requests_per_min=1)
    assert q.acquire("t", 0) is None
    assert all(q.acquire("t", 1 + i) is not None for i in range(10))
    assert q.acquire("other", 1) is None
    assert q.acquire("t", 60) is None


def test_tokens_are_settled_after_the_response():
    q = ledger(tokens_per_min=1000)
    assert q.acquire("t", 0) is None
    assert q.acquire("t", 0) is None  # nothing settled yet: admitted
    q.settle("t", 600, now=1)
    q.settle("t", 500, now=2)
    refused = q.acquire("t", 3)
    assert refused.limit == "tokens_per_min" and "1100 of its 1000" in refused.message
    # below the limit once the 600 from t=1 leave the window
    assert refused.retry_after_s == pytest.approx(1 + WINDOW_S - 3)
    assert q.acquire("t", 61) is None


def test_max_concurrency_counts_requests_in_flight():
    q = ledger(max_concurrency=2)
    assert q.acquire("t", 0) is None and q.acquire("t", 0) is None
    refused = q.acquire("t", 0)
    assert refused.limit == "max_concurrency" and refused.retry_after_s > 0
    q.settle("t", 10, now=1)
    assert q.acquire("t", 1) is None


def test_no_limits_admit_everything():
    q = ledger()
    assert all(q.acquire("t", i * 0.001) is None for i in range(10_000))
