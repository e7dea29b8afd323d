"""A cluster of its own for fault tests: two replicas of the tiny model deployed from the plan's
Serve config through Serve's REST API (what `serve deploy` does), bounded HTTP traffic, replica
kills and drains, each measured as a `Figures` row. Shared by tests/reliability/test_faults.py
and benchmarks/faults.py.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from stack_support import chat_body as _chat_body
from stack_support import wait_for
from paliserve.local import tiny_plan
from paliserve.spec import GATEWAY_DEPLOYMENT as GATEWAY
from paliserve.spec import HttpOptions, Plan, ReplicaBounds
from serve.cluster import LocalCluster, free_port, wait_until_healthy

APP = "paliserve"
CLIENT_TIMEOUT_S = 60
STREAM_LIMIT_S = 400
MAX_MODEL_LEN = 2048


def fault_plan(model_dir, port: int, replicas: int = 2) -> Plan:
    """Separate gateway and engine deployments (the topology of plans with several models or with
    adapters), so that each can be killed on its own; colocated, killing a replica is the gateway case."""
    plan = tiny_plan(model_dir, max_num_seqs=8, max_model_len=MAX_MODEL_LEN)
    plan.gateway.colocate = False
    plan.deployments[0].replicas = ReplicaBounds(min=replicas, initial=replicas, max=replicas)
    plan.http = HttpOptions(host="127.0.0.1", port=port)
    return plan


def chat_body(model: str, max_tokens: int, stream: bool) -> dict:
    return _chat_body(model, max_tokens, stream, color=(40, 120, 200))


@dataclass
class Outcome:
    start: float
    end: float
    label: str  # "200", "503", "200+in-band error", "connection error", "timeout"
    body: str = ""
    retry_after: str | None = None  # the Retry-After header of a response that has one

    @property
    def ok(self) -> bool:
        return self.label == "200"

    @property
    def hung(self) -> bool:
        return self.label == "timeout"


def call(client: httpx.Client, url: str, body: dict, on_first_token=None) -> Outcome:
    """One request with a client timeout; a stream is a success only if it ends with [DONE] and
    carries no error event. `on_first_token` is called once a stream's first content arrives."""
    start = time.monotonic()
    try:
        if not body["stream"]:
            reply = client.post(f"{url}/v1/chat/completions", json=body)
            return Outcome(start, time.monotonic(), str(reply.status_code), reply.text[:300], reply.headers.get("retry-after"))
        chunks: list[str] = []
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
            for chunk in reply.iter_text():
                chunks.append(chunk)
                if on_first_token is not None and '"content"' in chunk:
                    on_first_token()
                    on_first_token = None
        text = "".join(chunks)
        label = str(reply.status_code)
        if reply.status_code == 200 and ('"error"' in text or not text.rstrip().endswith("data: [DONE]")):
            label = "200+in-band error"
        return Outcome(start, time.monotonic(), label, text[-300:], reply.headers.get("retry-after"))
    except httpx.TimeoutException as exc:
        return Outcome(start, time.monotonic(), "timeout", repr(exc))
    except httpx.HTTPError as exc:
        return Outcome(start, time.monotonic(), "connection error", repr(exc))


class Traffic:
    """`clients` closed-loop clients, each stopping at `limit_s` or after `max_requests` in all."""

    def __init__(self, url: str, body: dict, clients: int = 2, limit_s: float = 300, max_requests: int = 2000):
        self.url, self.body, self.limit_s, self.max_requests = url, body, limit_s, max_requests
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 10)

    def _client(self) -> None:
        deadline = time.monotonic() + self.limit_s
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if len(self.outcomes) >= self.max_requests:
                        return
                outcome = call(client, self.url, self.body)
                with self._lock:
                    self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


@dataclass
class Figures:
    scenario: str
    sent: int
    failed: int
    statuses: dict[str, int]
    recovery_s: float | None
    hung: int
    notes: str = ""
    failures: list[Outcome] = field(default_factory=list, repr=False)
    open_at_stop: int | None = None
    after: Outcome | None = None
    last_failure_s: float | None = None  # from the fault to the start of the last failed request
    first_failure_s: float | None = None  # from the fault to the answer of the first failed request
    slowest_failure_s: float | None = None  # the longest a failed request waited for its answer
    slowest_s: float | None = None  # the longest any request sent after the fault waited for its answer

    @classmethod
    def of(cls, scenario: str, outcomes: list[Outcome], recovery_s: float | None, notes: str = "") -> Figures:
        failures = [o for o in outcomes if not o.ok]
        statuses = dict(sorted(Counter(o.label for o in outcomes).items()))
        return cls(scenario, len(outcomes), len(failures), statuses, recovery_s, sum(o.hung for o in outcomes), notes, failures)


def recovery_after(outcomes: list[Outcome], t0: float) -> float | None:
    """Seconds from `t0` to the end of the first 200 that started after every failure started."""
    last_failure = max((o.start for o in outcomes if not o.ok), default=t0)
    oks = [o.end for o in outcomes if o.ok and o.start >= max(t0, last_failure)]
    return min(oks) - t0 if oks else None


def failure_lines(figures: Figures, limit: int = 3) -> list[str]:
    return [f"{figures.scenario}: {o.label} after {o.end - o.start:.1f} s: {o.body[-240:]!r}" for o in figures.failures[:limit]]


def table(rows: list[Figures]) -> str:
    header = ("scenario", "sent", "failed", "statuses", "recovery s", "hung", "notes")
    lines = [header] + [
        (f.scenario, str(f.sent), str(f.failed), ", ".join(f"{k}: {v}" for k, v in f.statuses.items()),
         "-" if f.recovery_s is None else f"{f.recovery_s:.1f}", str(f.hung), f.notes)
        for f in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


@dataclass
class FaultStack:
    cluster: LocalCluster
    plan: Plan
    dashboard_url: str
    config: dict = field(default_factory=dict)

    @property
    def dashboard_headers(self) -> dict[str, str]:
        """Ray's token authentication covers its dashboard's REST API too."""
        return {"Authorization": f"Bearer {Path(self.cluster.info.auth_token_path).read_text().strip()}"}

    @property
    def url(self) -> str:
        return self.cluster.info.url

    @property
    def engine(self) -> str:
        return self.plan.deployments[0].name

    @property
    def model(self) -> str:
        return self.plan.deployments[0].model_name

    def deploy(self, config: dict) -> None:
        """PUT the Serve config to Ray's dashboard, as `serve deploy` does; returns at once."""
        reply = httpx.put(f"{self.dashboard_url}/api/serve/applications/", json=config, headers=self.dashboard_headers, timeout=60)
        reply.raise_for_status()
        self.config = config

    def with_engine_replicas(self, n: int) -> dict:
        """The current config with the engine's replica bounds at `n` (a lightweight update)."""
        config = copy.deepcopy(self.config)
        engine = next(d for d in config["applications"][0]["deployments"] if d["name"] == self.engine)
        if "autoscaling_config" in engine:
            engine["autoscaling_config"].update(min_replicas=n, initial_replicas=n, max_replicas=n)
        else:  # a plan whose bounds are equal gives Serve a fixed count
            engine["num_replicas"] = n
        return config

    def with_max_image_bytes(self, n: int) -> dict:
        """The current config with a user-visible gateway limit changed: new application args, so
        Serve replaces every replica (a rolling redeploy)."""
        config = copy.deepcopy(self.config)
        config["applications"][0]["args"]["plan"]["gateway"]["max_image_bytes"] = n
        return config

    def replica_states(self, deployment: str) -> dict[str, int]:
        from ray import serve

        app = serve.status().applications.get(APP)
        if app is None or deployment not in app.deployments:
            return {}
        return {str(getattr(s, "value", s)): n for s, n in app.deployments[deployment].replica_states.items()}

    def running(self, deployment: str) -> int:
        return self.replica_states(deployment).get("RUNNING", 0)

    def app_status(self) -> str:
        from ray import serve

        app = serve.status().applications.get(APP)
        return str(getattr(app.status, "value", app.status)) if app else "MISSING"

    def replica_names(self, deployment: str) -> list[str]:
        import ray

        prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))

    def kill_replica(self, deployment: str) -> str:
        import ray

        name = self.replica_names(deployment)[0]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        return name

    def wait_steady(self, replicas: int, timeout_s: float = 300) -> None:
        """Every deployment RUNNING with the engine at `replicas`, and /healthz 200."""
        gateways = {} if self.plan.colocated else {"RUNNING": 1}
        wait_for(lambda: self.app_status() == "RUNNING" and self.replica_states(self.engine) == {"RUNNING": replicas}
                 and self.replica_states(GATEWAY) == gateways, timeout_s,
                 what=f"{replicas} engine replicas and the gateway RUNNING")  # fmt: skip
        wait_until_healthy(self.url, timeout_s=timeout_s, app=APP)

    def redeploy_colocated(self, replicas: int = 2, timeout_s: float = 400) -> None:
        """The same model served colocated (gateway inside each engine replica, the default
        topology of a one-model plan), `replicas` of them, in place of the separate deployments."""
        plan = self.plan.model_copy(deep=True)
        plan.gateway.colocate = True
        plan.deployments[0].replicas = ReplicaBounds(min=replicas, initial=replicas, max=replicas)
        self.plan = plan
        self.deploy(plan.serve_config())
        self.wait_steady(replicas, timeout_s)

    def engine_cores(self, deployment: str) -> list[psutil.Process]:
        """vLLM's EngineCore processes under the replicas of `deployment`: children of a
        `ray::ServeReplica:<app>:<deployment>` process, looked for only in this cluster's tree."""
        found = []
        for process in psutil.Process(self.cluster.info.pid).children(recursive=True):
            try:
                if "EngineCore" not in process.name() and not any("EngineCore" in a for a in process.cmdline()):
                    continue
                parent = process.parent()
                if parent is not None and f"ServeReplica:{APP}:{deployment}" in " ".join(parent.cmdline()):
                    found.append(process)
            except psutil.Error:
                continue
        return found


def _dashboard_port(pid: int) -> int:
    args = psutil.Process(pid).cmdline()
    return int(next(a.split("=", 1)[1] for a in args if a.startswith("--dashboard-port=")))


@contextmanager
def fault_stack(model_dir, replicas: int = 2, start_timeout_s: float = 400):
    """Ray (with its dashboard, for the REST deploy), then the plan's Serve config deployed."""
    port = free_port()
    cluster = LocalCluster(http_port=port, dashboard=True)
    info = cluster.start()
    try:
        cluster.connect()
        plan = fault_plan(model_dir, port, replicas)
        stack = FaultStack(cluster, plan, f"http://127.0.0.1:{_dashboard_port(info.pid)}")
        wait_for(lambda: _reachable(stack), 120, what="Ray's dashboard")
        stack.deploy(plan.serve_config())  # the drain window is the product's (serve/app.py)
        stack.wait_steady(replicas, start_timeout_s)
        yield stack
    finally:
        cluster.stop()


def _reachable(stack: FaultStack) -> bool:
    try:
        url = f"{stack.dashboard_url}/api/serve/applications/"
        return httpx.get(url, headers=stack.dashboard_headers, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def kill_under_load(stack: FaultStack, deployment: str, scenario: str, clients: int = 2, max_tokens: int = 24,
                    stream: bool = False, settle_s: float = 10, limit_s: float = 300) -> Figures:  # fmt: skip
    """Kill one replica of `deployment` while `clients` send requests; measure until it is back."""
    replicas = stack.running(deployment)
    with Traffic(stack.url, chat_body(stack.model, max_tokens, stream), clients, limit_s) as traffic:
        wait_for(lambda: sum(o.ok for o in traffic.snapshot()) >= 3, 120, what="traffic served before the kill")
        killed_at = time.monotonic()
        stack.kill_replica(deployment)
        wait_for(lambda: stack.running(deployment) < replicas or time.monotonic() - killed_at > 20, 30, 0.2)
        wait_for(lambda: stack.replica_states(deployment) == {"RUNNING": replicas}, 300,
                 what=f"{deployment} back to {replicas} RUNNING")  # fmt: skip
        back_s = time.monotonic() - killed_at
        settled = time.monotonic()
        wait_for(lambda: any(o.ok and o.start > settled for o in traffic.snapshot()), 120, what="a 200 after recovery")
        time.sleep(settle_s)
    outcomes = traffic.snapshot()
    return Figures.of(scenario, outcomes, recovery_after(outcomes, killed_at), f"replica replaced in {back_s:.1f} s")


def kill_engine_process_under_load(stack: FaultStack, scenario: str, clients: int = 3, max_tokens: int = 24,
                                   settle_s: float = 10, limit_s: float = 300) -> Figures:  # fmt: skip
    """SIGKILL the vLLM EngineCore process under one replica of the engine deployment (colocated:
    the model's deployment) while `clients` send requests, half of them streams; measure until
    Serve has replaced that replica and 200s come back. The notes say when the last failed
    request started (the ingress stops sending to the dead replica) and when it was replaced."""
    deployment = stack.engine
    replicas = stack.running(deployment)
    bodies = [chat_body(stack.model, max_tokens, stream=i % 2 == 1) for i in range(clients)]
    traffics = [Traffic(stack.url, body, 1, limit_s) for body in bodies]
    for traffic in traffics:
        traffic.__enter__()
    try:
        wait_for(lambda: sum(o.ok for t in traffics for o in t.snapshot()) >= 3, 120, what="traffic served before the kill")
        victim = stack.engine_cores(deployment)[0]
        replica = psutil.Process(victim.ppid())
        killed_at = time.monotonic()
        victim.kill()
        wait_for(lambda: not replica.is_running() or replica.status() == psutil.STATUS_ZOMBIE, 300, 0.2,
                 what="the replica whose engine died stopped")  # fmt: skip
        stopped_s = time.monotonic() - killed_at
        wait_for(lambda: stack.replica_states(deployment) == {"RUNNING": replicas}, 300,
                 what=f"{deployment} back to {replicas} RUNNING")  # fmt: skip
        back_s = time.monotonic() - killed_at
        settled = time.monotonic()
        wait_for(lambda: any(o.ok and o.start > settled for t in traffics for o in t.snapshot()), 120,
                 what="a 200 after recovery")  # fmt: skip
        time.sleep(settle_s)
    finally:
        for traffic in traffics:
            traffic.__exit__(None, None, None)
    outcomes = sorted((o for t in traffics for o in t.snapshot()), key=lambda o: o.start)
    failed = [o for o in outcomes if not o.ok]
    last = max((o.start for o in failed), default=killed_at) - killed_at
    first = min((o.end for o in failed), default=killed_at) - killed_at
    slowest = max((o.end - o.start for o in failed), default=0.0)
    held = max((o.end - o.start for o in outcomes if o.start >= killed_at), default=0.0)
    figures = Figures.of(scenario, outcomes, recovery_after(outcomes, killed_at),
                         f"first failure answered {first:.1f} s after the kill, slowest in {slowest:.1f} s; "
                         f"slowest request sent after the kill answered in {held:.1f} s; "
                         f"last failure began {last:.1f} s after the kill; replica stopped after {stopped_s:.1f} s, "
                         f"replaced in {back_s:.1f} s")  # fmt: skip
    if failed:
        figures.last_failure_s, figures.first_failure_s, figures.slowest_failure_s = last, first, slowest
    figures.slowest_s = held
    return figures


def drain(stack: FaultStack, config: dict, scenario: str, replicas_after: int, streams: int = 6,
          max_tokens: int = MAX_MODEL_LEN - 64, timeout_s: float = 400) -> Figures:  # fmt: skip
    """Open `streams` long streams, apply `config` once each has its first token, and let them
    end; counts the streams still open when the first replica began stopping."""
    body = chat_body(stack.model, max_tokens, stream=True)
    outcomes: list[Outcome] = []
    started = [threading.Event() for _ in range(streams)]

    def one(event: threading.Event) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
            outcomes.append(call(client, stack.url, body, on_first_token=event.set))
        event.set()

    threads = [threading.Thread(target=one, args=(e,), daemon=True) for e in started]
    for t in threads:
        t.start()
    for event in started:
        assert event.wait(CLIENT_TIMEOUT_S), "a stream did not start"
    changed_at = time.monotonic()
    stack.deploy(config)
    open_at_stop = None
    while any(t.is_alive() for t in threads) and time.monotonic() - changed_at < STREAM_LIMIT_S:
        if open_at_stop is None and any("STOPPING" in stack.replica_states(d) for d in (stack.engine, GATEWAY)):
            open_at_stop = sum(t.is_alive() for t in threads)
        time.sleep(0.2)
    now = time.monotonic()
    outcomes += [Outcome(changed_at, now, "timeout", "still open") for t in threads if t.is_alive()]
    stack.wait_steady(replicas_after, timeout_s)
    steady_s = time.monotonic() - changed_at
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        after = call(client, stack.url, chat_body(stack.model, 8, stream=False))
    longest = max((o.end - o.start for o in outcomes), default=0)
    figures = Figures.of(scenario, outcomes, None, f"{open_at_stop or 0} of {streams} streams open when a replica began "
                         f"stopping; longest stream {longest:.1f} s; steady in {steady_s:.1f} s; next request {after.label}")  # fmt: skip
    figures.open_at_stop, figures.after = open_at_stop or 0, after
    return figures
