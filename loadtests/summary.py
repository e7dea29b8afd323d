"""The numbers of a load test: latency per tenant, SLO verdicts at the target load, and the
plan's predictions beside the measurements as error percentages. Pure: records in, dict out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from .latency import mean, percentile
from .records import Record
from .shapes import TARGET, Schedule
from .traffic import TrafficProfile

PERCENTILES = (50, 90, 95, 99)


def stats(values_s: list[float]) -> dict[str, float | int | None]:
    """count, mean and percentiles of latencies given in seconds, reported in milliseconds."""
    ms = [v * 1e3 for v in values_s]
    out: dict[str, float | int | None] = {"count": len(ms), "mean": _num(mean(ms))}
    for p in PERCENTILES:
        out[f"p{p}"] = _num(percentile(ms, p))
    return out


def latency_stats(records: Iterable[Record]) -> dict[str, dict]:
    ok = [r for r in records if r.ok]
    return {
        "ttft_ms": stats([r.ttft_s for r in ok]),
        "tpot_ms": stats([r.tpot_s for r in ok if r.tpot_s is not None]),
        "itl_ms": stats([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": stats([r.e2e_s for r in ok]),
    }


def error_pct(measured: float | None, predicted: float | None) -> float | None:
    if measured is None or not predicted or math.isnan(measured):
        return None
    return round((measured - predicted) / predicted * 100, 1)


def summarize(
    profile: TrafficProfile,
    records: list[Record],
    schedule: Schedule,
    replicas: dict[str, float] | None = None,
    max_error_rate: float = 0.01,
) -> dict:
    """The JSON summary. `replicas` maps deployment -> mean replicas seen (Prometheus); the
    plan's initial replicas stand in where it is missing."""
    replicas = replicas or {}
    target_s = sum(end - start for start, end in schedule.target_windows())
    by_tenant: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_tenant[r.tenant].append(r)
    tenants = {t.name: _tenant(t, by_tenant[t.name], target_s, max_error_rate) for t in profile.tenants}
    deployments = {
        name: _deployment(name, info, profile, tenants, replicas.get(name), by_tenant, schedule)
        for name, info in profile.deployments.items()
    }
    failures = [f"tenant {n}: {why}" for n, t in tenants.items() for why in t["slo"]["failures"]]
    return {
        "mode": profile.mode,
        "shape": profile.shape,
        "duration_s": profile.duration_s,
        "target_seconds": target_s,
        "stages": [{"until_s": s.until_s, "level": s.level, "label": s.label} for s in schedule.stages],
        "passed": not failures,
        "failures": failures,
        "tenants": tenants,
        "deployments": deployments,
        "by_stage": _by_stage(profile, records, schedule),
    }


def _tenant(t, records: list[Record], target_s: float, max_error_rate: float) -> dict:
    at_target = [r for r in records if r.stage == TARGET]
    ok = [r for r in at_target if r.ok]
    latency = latency_stats(at_target)
    good = [r for r in ok if r.ttft_s * 1e3 <= t.slo_ttft_p95_ms and (r.tpot_s or 0) * 1e3 <= t.slo_tpot_p95_ms]
    errors = len(at_target) - len(ok)
    error_rate = errors / len(at_target) if at_target else 0.0
    ttft_p95, tpot_p95, tpot_mean = latency["ttft_ms"]["p95"], latency["tpot_ms"]["p95"], latency["tpot_ms"]["mean"]
    failures = []
    if not ok:
        failures.append("no successful request at the target load")
    if ttft_p95 is not None and ttft_p95 > t.slo_ttft_p95_ms:
        failures.append(f"TTFT p95 {ttft_p95:.1f} ms > SLO {t.slo_ttft_p95_ms:g} ms")
    if tpot_p95 is not None and tpot_p95 > t.slo_tpot_p95_ms:
        failures.append(f"TPOT p95 {tpot_p95:.2f} ms > SLO {t.slo_tpot_p95_ms:g} ms")
    if error_rate > max_error_rate:
        failures.append(f"error rate {error_rate:.1%} > {max_error_rate:.1%} ({errors} of {len(at_target)} failed)")
    tokens = sum(r.output_tokens or 0 for r in ok)
    return {
        "deployment": t.deployment,
        "model": t.model,
        "concurrency": t.concurrency,
        "all": {"requests": len(records), "failures": sum(not r.ok for r in records), **latency_stats(records)},
        "at_target": {
            "requests": len(at_target),
            "failures": errors,
            "error_rate": round(error_rate, 4),
            "requests_per_s": _rate(len(ok), target_s),
            "output_tokens_per_s": _rate(tokens, target_s),
            "mean_in_flight": _rate(sum(r.e2e_s for r in ok), target_s),
            "output_tokens_mean": _num(mean([r.output_tokens for r in ok if r.output_tokens is not None])),
            "prompt_tokens_mean": _num(mean([r.prompt_tokens for r in ok if r.prompt_tokens is not None])),
            **latency,
        },
        "slo": {
            "ttft_p95_ms": t.slo_ttft_p95_ms,
            "tpot_p95_ms": t.slo_tpot_p95_ms,
            "attainment": round(len(good) / len(at_target), 4) if at_target else None,
            "met": not failures,
            "failures": failures,
        },
        "predicted": {"ttft_p95_ms": t.predicted_ttft_p95_ms, "tpot_ms": t.predicted_tpot_ms},
        "error_pct": {
            "ttft_p95": error_pct(ttft_p95, t.predicted_ttft_p95_ms),
            "tpot_mean": error_pct(tpot_mean, t.predicted_tpot_ms),
        },
    }


def _deployment(name, info, profile, tenants, replicas_seen, by_tenant, schedule) -> dict:
    own = [t for t in profile.tenants if t.deployment == name]
    replicas = replicas_seen or info["replicas_initial"] or 1
    tokens_s = sum(tenants[t.name]["at_target"]["output_tokens_per_s"] or 0 for t in own)
    requests_s = sum(tenants[t.name]["at_target"]["requests_per_s"] or 0 for t in own)
    best = _best_sustained(own, by_tenant, schedule, tenants)
    per_replica_best = best["requests_per_s"] / replicas if best else None
    reached = best["mean_in_flight"] / replicas if best else 0.0
    comparable = bool(best) and reached >= info["max_concurrency"]
    return {
        "replicas": replicas,
        "replicas_source": "prometheus" if replicas_seen else "plan (replicas.initial)",
        "at_target": {
            "output_tokens_per_s_per_replica": round(tokens_s / replicas, 2),
            "requests_per_s_per_replica": round(requests_s / replicas, 3),
        },
        "predicted": {k: info[k] for k in ("ttft_p95_ms", "tpot_ms", "tokens_per_s", "max_concurrency", "requests_per_s")},
        "error_pct": {"tokens_per_s": error_pct(tokens_s / replicas, info["tokens_per_s"])},
        "max_sustainable": {
            "stage": best["stage"] if best else None,
            "requests_per_s_per_replica": round(per_replica_best, 3) if best else None,
            "mean_in_flight_per_replica": round(reached, 2),
            "predicted_requests_per_s": info["requests_per_s"],
            "predicted_at_concurrency": info["max_concurrency"],
            "error_pct": error_pct(per_replica_best, info["requests_per_s"]) if comparable else None,
            "note": "" if comparable else (
                f"the load reached {reached:.1f} requests in flight per replica, below the planned maximum "
                f"{info['max_concurrency']}: the measurement is a lower bound, not an error"
            ),
        },
    }


def _stage_groups(schedule: Schedule) -> dict[tuple[str, float], float]:
    """Seconds spent at each (label, level)."""
    seconds: dict[tuple[str, float], float] = defaultdict(float)
    start = 0.0
    for s in schedule.stages:
        seconds[(s.label, s.level)] += s.until_s - start
        start = s.until_s
    return seconds


def _by_stage(profile, records: list[Record], schedule: Schedule) -> list[dict]:
    rows = []
    for (label, level), seconds in _stage_groups(schedule).items():
        rows_records = [r for r in records if r.stage == label and r.level == level]
        ok = [r for r in rows_records if r.ok]
        lat = latency_stats(rows_records)
        rows.append({
            "stage": label,
            "level": level,
            "seconds": seconds,
            "requests": len(rows_records),
            "failures": len(rows_records) - len(ok),
            "requests_per_s": _rate(len(ok), seconds),
            "output_tokens_per_s": _rate(sum(r.output_tokens or 0 for r in ok), seconds),
            "mean_in_flight": _rate(sum(r.e2e_s for r in ok), seconds),
            "ttft_p95_ms": lat["ttft_ms"]["p95"],
            "tpot_p95_ms": lat["tpot_ms"]["p95"],
        })  # fmt: skip
    return rows


def _best_sustained(own, by_tenant, schedule, tenants) -> dict | None:
    """The busiest stage at which every tenant of the deployment met its SLO."""
    best = None
    for (label, level), seconds in _stage_groups(schedule).items():
        records = [r for t in own for r in by_tenant[t.name] if r.stage == label and r.level == level]
        ok = [r for r in records if r.ok]
        if not ok or len(ok) < len(records):
            continue
        met = all(
            _meets(t, [r for r in ok if r.tenant == t.name]) for t in own
        )
        if met:
            candidate = {
                "stage": f"{label} x{level:g}",
                "requests_per_s": len(ok) / seconds,
                "mean_in_flight": sum(r.e2e_s for r in ok) / seconds,
            }
            if best is None or candidate["requests_per_s"] > best["requests_per_s"]:
                best = candidate
    return best


def _meets(t, ok: list[Record]) -> bool:
    if not ok:
        return False
    ttft = percentile([r.ttft_s * 1e3 for r in ok], 95)
    tpots = [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None]
    return ttft <= t.slo_ttft_p95_ms and (not tpots or percentile(tpots, 95) <= t.slo_tpot_p95_ms)


def _rate(amount: float, seconds: float) -> float | None:
    return round(amount / seconds, 3) if seconds > 0 else None


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 3)
