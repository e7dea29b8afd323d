"""Gateway admission overhead per request: authentication, quota and fair queue, tenancy on
beside tenancy off, at a high request rate.

Runs the gateway's admission code (`serve.tenancy.admission.Tenancy`) in this process, as a
gateway replica runs it, against the real quota authority deployed on a local Ray Serve (the
one remote call per request; settlement after the response goes in the background). No engine:
what is timed is the admission path alone, from the raw `Authorization` header to a granted
engine slot, plus handing the slot back.

- tenancy on: a plan with TENANTS tenants (one key each, every one with limits high enough
  never to refuse): constant-time key lookup over every digest, access check, a quota acquire
  at the authority, a fair-queue slot, and release (quota settled in the background).
- tenancy off: the same gateway code with a plan without tenants (loopback check and the
  fair-queue slot only).

    .venv/bin/python benchmarks/admission.py [--requests 3000] [--concurrency 64] [--tenants 100]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paliserve.spec import AdapterPlan, TenantLimits, TenantPlan  # noqa: E402
from serve.tenancy.admission import Tenancy, TenancyConfig  # noqa: E402
from serve.tenancy.authority import QuotaAuthority  # noqa: E402

MODEL = "tiny-paligemma"
CAPACITY = 64


def tenants(n: int) -> list[TenantPlan]:
    limits = TenantLimits(requests_per_min=10**9, tokens_per_min=10**12, max_concurrency=10**6)
    return [
        TenantPlan(name=f"t{i}", api_key_sha256=[hashlib.sha256(f"sk-bench-{i}".encode()).hexdigest()],
                   models=[MODEL], adapters=[f"a{i}"], limits=limits)  # fmt: skip
        for i in range(n)
    ]


def config(with_tenants: list[TenantPlan]) -> TenancyConfig:
    adapters = [AdapterPlan(name=t.adapters[0], path="/unused", tenant=t.name).model_dump() for t in with_tenants]
    return TenancyConfig(
        tenants=[t.model_dump(mode="json") for t in with_tenants], adapters={MODEL: adapters}, capacity={MODEL: CAPACITY}
    )


async def drive(tenancy: Tenancy, requests: int, concurrency: int, keys: list[str | None]) -> tuple[list[float], float]:
    """Admit `requests` requests from `concurrency` callers as fast as they come; seconds each."""
    timings: list[float] = []
    remaining = iter(range(requests))

    async def caller():
        for i in remaining:
            key = keys[i % len(keys)]
            started = time.perf_counter()
            tenant = tenancy.authenticate(f"Bearer {key}" if key else None, "127.0.0.1")
            target = tenancy.resolve(MODEL, tenant)
            ticket = await tenancy.admit(tenant, target, estimate=30)
            ticket.finish(200, prompt_tokens=20, completion_tokens=10)
            timings.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return timings, time.perf_counter() - started


def report(name: str, timings: list[float], wall: float) -> dict:
    ordered = sorted(timings)
    row = {
        "mean_us": statistics.fmean(ordered) * 1e6,
        "p50_us": ordered[len(ordered) // 2] * 1e6,
        "p95_us": ordered[int(len(ordered) * 0.95)] * 1e6,
        "rate": len(ordered) / wall,
    }
    print(f"{name:13} {row['mean_us']:>10.0f} {row['p50_us']:>10.0f} {row['p95_us']:>10.0f} {row['rate']:>12.0f}")
    return row


async def main(args) -> None:
    from ray import serve

    plan_tenants = tenants(args.tenants)
    limits = {t.name: t.limits.model_dump() for t in plan_tenants}
    authority = serve.run(QuotaAuthority.bind(limits), name="admission-bench", route_prefix=None)
    on = Tenancy(config(plan_tenants), authority)
    off = Tenancy(config([]))
    keys = [f"sk-bench-{i}" for i in range(args.tenants)]
    await drive(on, 200, args.concurrency, keys)  # warm-up: handle routing, metric registration
    await drive(off, 200, args.concurrency, [None])
    print(f"\n{args.requests} requests, {args.concurrency} concurrent callers, {args.tenants} tenants, one quota authority")
    print(f"{'':13} {'mean µs':>10} {'p50 µs':>10} {'p95 µs':>10} {'admitted/s':>12}")
    rows = {}
    for round_ in range(args.rounds):
        rows.setdefault("off", []).append(report(f"off  (round {round_ + 1})", *await drive(off, args.requests, args.concurrency, [None])))
        rows.setdefault("on", []).append(report(f"on   (round {round_ + 1})", *await drive(on, args.requests, args.concurrency, keys)))
    med = {k: statistics.median(r["mean_us"] for r in v) for k, v in rows.items()}
    rate = {k: statistics.median(r["rate"] for r in v) for k, v in rows.items()}
    print(f"\nmedian mean admission: on {med['on']:.0f} µs, off {med['off']:.0f} µs, ratio on/off {med['on'] / med['off']:.1f}x; "
          f"added by tenancy {med['on'] - med['off']:.0f} µs per request; "
          f"admitted/s on {rate['on']:.0f}, off {rate['off']:.0f}")  # fmt: skip
    await asyncio.sleep(1.0)  # let background settlements finish before shutdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="paliserve-admission-") as temp_dir:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR", log_to_driver=False,
                 _node_ip_address="127.0.0.1")  # fmt: skip
        try:
            asyncio.run(main(args))
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
