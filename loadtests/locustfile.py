"""Locust users generated from a traffic profile (env PALISERVE_LOADTEST_PROFILE, written by
the runner): one user class per tenant, streaming chat completions, with TTFT, TPOT, ITL and
E2E reported as custom request types named by tenant.

closed mode: each user sends its next request when the last one ends; users per tenant follow
the shape (the tenant's concurrency x the stage's level).
open mode: one user per tenant spawns requests at Poisson arrival times (the tenant's request
rate x the stage's level), whether or not earlier ones have finished.
"""

from __future__ import annotations

import itertools
import os
import random
import time

import gevent
from gevent.pool import Pool
from locust import HttpUser, LoadTestShape, constant, events, task
from locust import stats as locust_stats
from urllib3 import PoolManager

from loadtests.images import png_data_url
from loadtests.latency import measure
from loadtests.records import Record, RecordWriter
from loadtests.shapes import Stage, users_at
from loadtests.sse import StreamError, read_stream
from loadtests.traffic import TenantTraffic, TrafficProfile, chat_body

PROFILE = TrafficProfile.load(os.environ["PALISERVE_LOADTEST_PROFILE"])
SCHEDULE = PROFILE.schedule()
IMAGES_PER_TENANT = 4
IMAGES = {
    t.name: [png_data_url(t.image_size, PROFILE.seed * 1000 + i) for i in range(IMAGES_PER_TENANT)]
    for t in PROFILE.tenants
}
WRITER = RecordWriter(PROFILE.records_path)
_user_ids = itertools.count()


@events.test_stop.add_listener
def _let_the_csv_writer_catch_up(**_) -> None:
    # Locust rewrites PREFIX_stats.csv every CSV_STATS_INTERVAL_SEC and not at exit: wait for
    # one more write so the CSV holds the requests that ended while users were stopping.
    gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.5)


class PlanShape(LoadTestShape):
    def tick(self):
        stage = SCHEDULE.at(self.get_run_time())
        if stage is None:
            return None
        if PROFILE.mode == "open":
            users = len(PROFILE.tenants)
        else:
            users = sum(users_at(stage.level, t.concurrency) for t in PROFILE.tenants)
        return users, max(users, 1)


class TenantUser(HttpUser):
    abstract = True
    tenant: TenantTraffic
    wait_time = constant(0)
    pool_manager = PoolManager(maxsize=PROFILE.max_in_flight_per_tenant)

    def on_start(self) -> None:
        self.rng = random.Random(f"{PROFILE.seed}-{self.tenant.name}-{next(_user_ids)}")
        self.pool = Pool(PROFILE.max_in_flight_per_tenant) if PROFILE.mode == "open" else None

    def on_stop(self) -> None:
        if self.pool is not None:
            self.pool.join(timeout=30)

    @task
    def send(self) -> None:
        if self.pool is None:
            self.one_request()
        else:
            self.arrivals()

    def now(self) -> tuple[float, Stage]:
        elapsed = self.environment.shape_class.get_run_time()
        return elapsed, SCHEDULE.at(elapsed) or SCHEDULE.stages[-1]

    def arrivals(self) -> None:
        """Poisson arrivals until the schedule ends (bounded by its duration)."""
        while (stage := SCHEDULE.at(self.environment.shape_class.get_run_time())) is not None:
            gevent.sleep(self.rng.expovariate(self.tenant.request_rate * stage.level))
            if self.pool.full():
                self.overflow()
            else:
                self.pool.spawn(self.one_request)

    def overflow(self) -> None:
        elapsed, stage = self.now()
        error = f"overflow: {PROFILE.max_in_flight_per_tenant} requests already in flight"
        WRITER.write(Record(self.tenant.name, time.time(), elapsed, stage.label, stage.level, ok=False, error=error))
        self.environment.events.request.fire(
            request_type="POST", name=self.tenant.name, response_time=0, response_length=0,
            exception=RuntimeError(error), context={},
        )  # fmt: skip

    def one_request(self) -> None:
        tenant = self.tenant
        body = chat_body(tenant, self.rng, self.rng.choice(IMAGES[tenant.name]))
        headers = {"Authorization": f"Bearer {tenant.key}"} if tenant.key else {}
        elapsed, stage = self.now()
        record = Record(tenant.name, time.time(), elapsed, stage.label, stage.level, ok=False, max_tokens=body["max_tokens"])
        sent = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, name=tenant.name, stream=True, catch_response=True
        ) as response:
            record.status = response.status_code
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(response.text or str(response.error))[:300]}"
                response.failure(record.error)
            else:
                try:
                    timeline = read_stream(response.iter_lines(), sent, time.perf_counter)
                    latency = measure(timeline)
                    if latency is None:
                        raise StreamError("no token chunk before [DONE]")
                except Exception as exc:  # reported as the request's failure, never raised
                    record.error = f"{type(exc).__name__}: {exc}"[:300]
                    response.failure(record.error)
                else:
                    record.ok = True
                    record.ttft_s, record.e2e_s, record.tpot_s = latency.ttft_s, latency.e2e_s, latency.tpot_s
                    record.itl_s = list(latency.itl_s)
                    record.output_tokens, record.prompt_tokens = latency.output_tokens, timeline.prompt_tokens
                    response.success()
        WRITER.write(record)
        if record.ok:
            self.report(record)

    def report(self, record: Record) -> None:
        fire = self.environment.events.request.fire
        name = self.tenant.name

        def one(kind: str, seconds: float) -> None:
            fire(request_type=kind, name=name, response_time=seconds * 1e3, response_length=0, exception=None, context={})

        one("TTFT", record.ttft_s)
        if record.tpot_s is not None:
            one("TPOT", record.tpot_s)
        for gap in record.itl_s:
            one("ITL", gap)
        one("E2E", record.e2e_s)


for _i, _tenant in enumerate(PROFILE.tenants):
    _name = f"Tenant{_i}_" + "".join(c if c.isalnum() else "_" for c in _tenant.name)
    globals()[_name] = type(
        _name,
        (TenantUser,),
        {"tenant": _tenant, "weight": _tenant.concurrency if PROFILE.mode == "closed" else 1, "abstract": False},
    )
