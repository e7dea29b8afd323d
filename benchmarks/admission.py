"""Gateway admission overhead per request: authentication, quota and fair queue, with quotas in
the cluster's quota store (Redis) against the same path without limits, at a high request rate.

Runs the gateway's admission code (`serve.tenancy.admission.Tenancy`) in this process, as a
gateway replica runs it, against a real redis-server this benchmark starts (loopback, own port
and directory, password; stopped by PID): one atomic script per admission, one more per finished
request in the background. No engine: what is timed is the admission path alone, from the raw
`Authorization` header to a granted engine slot, plus handing the slot back.

- quotas: TENANTS tenants (one key each) with limits high enough never to refuse: key lookup over
  every digest, access check, the quota (local credit, serve/tenancy/credit.py, for one gateway:
  the store is asked in the background; an admission waits on it only without credit), a
  fair-queue slot, release (settled in batches).
- quotas, no credit: the same with every admission asking the store (the path before credit).
- no limits: the same tenants without limits (no call to the store): the baseline.
- open: a plan without tenants (loopback check and the fair-queue slot only).
- 4 gateways: PROCESSES OS processes, each running the quotas path at CONCURRENCY against the
  same Redis at once, credit sized for PROCESSES gateways; admissions/s summed over them. Each
  process's timed run follows WARMUP untimed admissions once all have started, as in one process.

Printed besides: the date and load average at start and end, and how many admissions of each
timed run were not from local credit (each waited on the store: for its own call or for credit
on its way): over 1% of a run is a p99 that waits on Redis.

A machine-speed control (benchmarks/_control.py, a fixed pure-Python loop) is printed first:
figures from this shared machine compare only beside it.

    .venv/bin/python benchmarks/admission.py [--requests 5000] [--concurrency 64] [--tenants 100] [--processes 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import queue
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _control import machine_speed  # noqa: E402

from paliserve.spec import AdapterPlan, TenantLimits, TenantPlan  # noqa: E402
from serve.errors import Overloaded  # noqa: E402
from serve.tenancy.admission import Tenancy, TenancyConfig  # noqa: E402
from serve.tenancy.quotas import QuotaStore  # noqa: E402

MODEL = "tiny-paligemma"
WARMUP = 500  # untimed admissions before each timed run
CAPACITY = 64


def tenants(n: int, limited: bool = True) -> list[TenantPlan]:
    limits = TenantLimits(requests_per_min=10**9, tokens_per_min=10**12, max_concurrency=10**6) if limited else TenantLimits()
    return [
        TenantPlan(name=f"t{i}", api_key_sha256=[hashlib.sha256(f"sk-bench-{i}".encode()).hexdigest()],
                   models=[MODEL], adapters=[f"a{i}"], limits=limits)  # fmt: skip
        for i in range(n)
    ]


def config(with_tenants: list[TenantPlan], gateways: int | None = None) -> TenancyConfig:
    adapters = [AdapterPlan(name=t.adapters[0], path="/unused", tenant=t.name).model_dump() for t in with_tenants]
    return TenancyConfig(
        tenants=[t.model_dump(mode="json") for t in with_tenants], adapters={MODEL: adapters}, capacity={MODEL: CAPACITY},
        gateways=gateways,
    )


REFUSED: list[int] = [0]  # admissions refused (503: the store did not answer within its timeout)
CREDIT: dict[str, int] = {}  # admissions from local credit and asking the store, one gateway with credit
TIMED_WAITED: list[int] = []  # admissions not from credit (they waited on the store) in each timed run, one gateway with credit


async def drive(tenancy: Tenancy, requests: int, concurrency: int, keys: list[str | None]) -> tuple[list[float], float]:
    """Admit `requests` requests from `concurrency` callers as fast as they come; seconds each
    (refusals are counted in REFUSED, not timed)."""
    timings: list[float] = []
    remaining = iter(range(requests))

    async def caller():
        for i in remaining:
            # a request handler awaits between admissions (its body, the engine): so does each caller,
            # outside the timed part, which lets the loop run what admission left in the background
            await asyncio.sleep(0)
            key = keys[i % len(keys)]
            started = time.perf_counter()
            tenant = tenancy.authenticate(f"Bearer {key}" if key else None, "127.0.0.1")
            target = tenancy.resolve(MODEL, tenant)
            try:
                ticket = await tenancy.admit(tenant, target, estimate=30)
            except Overloaded:
                REFUSED[0] += 1
                continue
            ticket.finish(200, prompt_tokens=20, completion_tokens=10)
            timings.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return timings, time.perf_counter() - started


def count_waits(tenancy: Tenancy) -> Tenancy:
    """Counts, in `tenancy.credit.waited`, the admissions that credit did not cover: each awaited
    `QuotaCredit.acquire` (its own call to the store, or credit on its way)."""
    credit = tenancy.credit
    acquire, credit.waited = credit.acquire, 0

    async def counted(*args, **kwargs):
        credit.waited += 1
        return await acquire(*args, **kwargs)

    credit.acquire = counted
    return tenancy


def summary(timings: list[float], wall: float) -> dict:
    ordered = sorted(timings)
    return {
        "mean_us": statistics.fmean(ordered) * 1e6,
        "p50_us": ordered[len(ordered) // 2] * 1e6,
        "p99_us": ordered[int(len(ordered) * 0.99)] * 1e6,
        "rate": len(ordered) / wall,
    }


def report(name: str, row: dict) -> dict:
    print(f"{name:24} {row['mean_us']:>9.0f} {row['p50_us']:>9.0f} {row['p99_us']:>9.0f} {row['rate']:>12.0f}")
    return row


def store_for(info) -> QuotaStore:
    return QuotaStore(info["url"], info["password"])


def gateway_process(info: dict, args, start, results) -> None:
    """One gateway: the quotas path at `args.concurrency` against the shared store."""

    async def run():
        on = count_waits(Tenancy(config(tenants(args.tenants), gateways=args.processes), store_for(info)))
        keys = [f"sk-bench-{i}" for i in range(args.tenants)]
        await drive(on, 200, args.concurrency, keys)  # warm-up: connections, scripts loaded
        results.put("ready")
        start.wait()
        # as in one process: each timed run follows WARMUP untimed admissions (the other processes'
        # start-up outlasted the credit the warm-up above left)
        await drive(on, WARMUP, args.concurrency, keys)
        waited = on.credit.waited
        timings, wall = await drive(on, args.requests, args.concurrency, keys)
        ended = time.time()
        waited = on.credit.waited - waited
        await on.credit.aclose()  # credit handed back, bookkeeping sent
        await on.quotas.aclose()
        results.put(json.dumps({"timings": timings, "wall": wall, "began": ended - wall, "ended": ended,
                                "refused": REFUSED[0], "local": on.credit.local, "asked": on.credit.asked,
                                "timed_waited": waited}))

    asyncio.run(run())


def four_gateways(info: dict, args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=gateway_process, args=(info, args, start, results), daemon=True)  # die with this one
             for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    for _ in procs:  # every process imported and warmed up before any starts
        assert results.get(timeout=120) == "ready"
    start.set()
    runs = []
    while len(runs) < len(procs):  # a process that died without a result fails the run, not hangs it
        try:
            runs.append(json.loads(results.get(timeout=5)))
        except queue.Empty:
            if sum(p.exitcode not in (None, 0) for p in procs):
                for proc in procs:
                    proc.kill()
                raise RuntimeError("a gateway process failed; see its traceback above") from None
    for proc in procs:
        proc.join(30)
    timings = [t for run in runs for t in run["timings"]]
    wall = max(r["ended"] for r in runs) - min(r["began"] for r in runs)
    REFUSED[0] += sum(r["refused"] for r in runs)
    return {**summary(timings, wall), "local": sum(r["local"] for r in runs), "asked": sum(r["asked"] for r in runs),
            "timed_waited": sum(r["timed_waited"] for r in runs)}


async def one_gateway(info: dict, args) -> dict[str, list[dict]]:
    keys = [f"sk-bench-{i}" for i in range(args.tenants)]
    setups = {
        "open (no tenants)": (Tenancy(config([])), [None]),
        "tenants, no limits": (Tenancy(config(tenants(args.tenants, limited=False))), keys),
        "tenants, quotas (Redis)": (count_waits(Tenancy(config(tenants(args.tenants), gateways=1), store_for(info))), keys),
        "quotas, no credit": (Tenancy(config(tenants(args.tenants)), store_for(info)), keys),
    }
    for tenancy, k in setups.values():  # warm-up: metric registration, connections, scripts
        await drive(tenancy, 300, args.concurrency, k)
    rows: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):
        for name, (tenancy, k) in setups.items():
            await drive(tenancy, WARMUP, args.concurrency, k)  # steady state: what earlier setups' runs left lapsed
            waited = getattr(tenancy.credit, "waited", 0)
            row = summary(*await drive(tenancy, args.requests, args.concurrency, k))
            if name == "tenants, quotas (Redis)":
                TIMED_WAITED.append(tenancy.credit.waited - waited)
            rows.setdefault(name, []).append(report(f"{name} #{round_ + 1}", row))
    await asyncio.sleep(0.5)  # let background settlements finish
    credit = setups["tenants, quotas (Redis)"][0].credit
    CREDIT.update(local=credit.local, asked=credit.asked)
    return rows


def median_row(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(args) -> None:
    from serve.cluster import free_port
    from serve.redis_server import LocalRedis, find_redis_server

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop redis-server below
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load()}")
    speed = machine_speed()
    print(f"machine-speed control: {speed:.3f} s for the fixed loop (benchmarks/_control.py; lower is faster)")
    with tempfile.TemporaryDirectory(prefix="paliserve-admission-") as temp_dir:
        server = LocalRedis(find_redis_server(), free_port(), str(Path(temp_dir) / "redis"))
        redis_info = server.start()
        info = {"url": redis_info.url, "password": Path(redis_info.password_file).read_text()}
        try:
            print(f"\none gateway process: {args.requests} admissions per run, {args.concurrency} concurrent callers, "
                  f"{args.tenants} tenants, {args.rounds} rounds")  # fmt: skip
            print(f"{'':24} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9} {'admitted/s':>12}")
            rows = asyncio.run(one_gateway(info, args))
            print(f"\n{args.processes} gateway processes, each {args.requests} admissions at {args.concurrency} concurrent callers, one Redis")
            multi = [report(f"{args.processes} gateways #{i + 1}", four_gateways(info, args)) for i in range(args.rounds)]
        finally:
            server.stop()
    base, quotas, open_, exact = (median_row(rows[k]) for k in
                                  ("tenants, no limits", "tenants, quotas (Redis)", "open (no tenants)", "quotas, no credit"))
    multi_med = median_row(multi)
    print(f"\nmedians over {args.rounds} rounds (machine-speed control {speed:.3f} s):")
    print(f"  quotas vs no limits, one gateway: p50 {quotas['p50_us']:.0f} vs {base['p50_us']:.0f} µs "
          f"(+{quotas['p50_us'] - base['p50_us']:.0f} µs), p99 {quotas['p99_us']:.0f} vs {base['p99_us']:.0f} µs "
          f"(+{quotas['p99_us'] - base['p99_us']:.0f} µs; target <= +2000), "
          f"admitted/s {quotas['rate']:.0f} vs {base['rate']:.0f} ({quotas['rate'] / base['rate']:.2f}x)")  # fmt: skip
    print(f"  quotas, no credit (every admission asks Redis): p50 {exact['p50_us']:.0f} µs, p99 {exact['p99_us']:.0f} µs "
          f"(+{exact['p99_us'] - base['p99_us']:.0f} µs), admitted/s {exact['rate']:.0f}")  # fmt: skip
    print(f"  open (no tenants): p50 {open_['p50_us']:.0f} µs, p99 {open_['p99_us']:.0f} µs, admitted/s {open_['rate']:.0f}")
    print(f"  {args.processes} gateways with quotas: {multi_med['rate']:.0f} admitted/s in all (target >= 5000), "
          f"p50 {multi_med['p50_us']:.0f} µs, p99 {multi_med['p99_us']:.0f} µs")  # fmt: skip
    multi_local, multi_asked = sum(r["local"] for r in multi), sum(r["asked"] for r in multi)
    print(f"  admissions from local credit: one gateway {CREDIT['local']} of {CREDIT['local'] + CREDIT['asked']}, "
          f"{args.processes} gateways {multi_local} of {multi_local + multi_asked} (warm-ups included)")  # fmt: skip
    print(f"  admissions that waited on the store (not covered by credit) in the timed runs: one gateway {TIMED_WAITED} of "
          f"{args.requests} each, {args.processes} gateways {[r['timed_waited'] for r in multi]} of "
          f"{args.processes * args.requests} each (1% of a run is what its p99 allows)")  # fmt: skip
    # In a closed loop, a caller that awaits the store waits for the other callers' turns too:
    # latency at concurrency 64 is about 64 x the CPU an admission costs. The CPU it adds:
    print(f"  CPU per admission, one process: quotas {1e6 / quotas['rate']:.0f} µs, no limits {1e6 / base['rate']:.0f} µs "
          f"(+{1e6 / quotas['rate'] - 1e6 / base['rate']:.0f} µs); refused (store timeout): {REFUSED[0]}")  # fmt: skip
    print(f"ended {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load()} (1, 5, 15 min; this machine's cores: "
          f"{os.cpu_count()})")  # fmt: skip


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args())
