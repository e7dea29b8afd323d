"""The KubeRay path rehearsed (k8s/rehearsal.py): the dev overlay rendered for the tiny model with
GCS fault tolerance on an operator-given Redis, its head and worker pods started as their specs
say, its serveConfigV2 deployed through the dashboard's REST API as the operator does, a chat
request served through it; then the GCS server killed under light load and started again.
Clients send to the serve Service's endpoint, as they would in Kubernetes: with GCS fault
tolerance the RayService excludes the head pod from it, so that is the worker pod's own ingress
(k8s/rehearsal.py: `Rehearsal.serve_endpoints`).

Both Redis servers (the quota store and the GCS store) are real `redis-server`s on loopback
ports of this test, with passwords that reach the pods through the Secrets the operator would
create. Ports 31000-31999.
"""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest
import yaml
from k8s_plans import LOCAL_CPU, documents

from k8s.render import render
from k8s.rehearsal import Rehearsal, free_port_in, venv_env
from k8s.settings import Settings
from k8s.sources import load_plan_or_spec
from paliserve.spec import HttpOptions
from serve.redis_server import LocalRedis, find_redis_server
from stack_support import chat_body, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]

KEY = "sk-local-dev"  # local-cpu.yaml's tenant `local`
MODEL = "tiny-paligemma"


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    root = tmp_path_factory.mktemp("pods")
    port = free_port_in(31000, 32000)
    quota, gcs = (LocalRedis(binary, port(), str(root / name)) for name in ("quota-store", "gcs-store"))
    for store in (quota, gcs):
        store.start()
    model = str(root / "models" / MODEL)  # a pod path under the root: kept as it is (k8s/rehearsal.py)
    plan = load_plan_or_spec(LOCAL_CPU, model)
    plan = plan.model_copy(update={"http": HttpOptions(host="127.0.0.1", port=port())})
    settings = Settings(tiny_model=model, quota_store_url=quota.info.url,
                        gcs_redis_address=f"127.0.0.1:{gcs.info.port}")
    docs = documents(render(plan, "dev", settings), "dev")
    # what the operator creates beside the rendered tree: the two stores' passwords
    operator_secrets = [
        {"kind": "Secret", "metadata": {"name": f"{settings.name}-{name}"},
         "stringData": {"password": open(store.info.password_file).read()}}
        for name, store in (("quota-store", quota), ("gcs-store", gcs))]
    run = Rehearsal(docs["RayService"], [docs["Secret"], docs["ConfigMap"], *operator_secrets], root, port,
                    extra_env=venv_env())
    try:
        started = time.monotonic()
        run.start()
        run.deploy()
        run.wait_running()
        wait_for(run.serve_endpoints, 60, what="a ready endpoint of the serve Service")
        run.started_s = time.monotonic() - started
        (endpoint,) = run.serve_endpoints()
        run.url = endpoint.serve_url
        yield run
    finally:
        run.stop(keep_logs=root / "logs")  # pytest keeps its last 3 temp roots
        for store in (quota, gcs):
            store.stop()


def chat(url: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=chat_body(MODEL, 8),
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout)


def test_the_rendered_rayservice_serves_chat(rehearsal):
    print(f"\nrehearsal: pods up and application RUNNING in {rehearsal.started_s:.1f} s")
    for pod in rehearsal.pods:
        print(f"  {pod.name}: {pod.command}")
    head, worker = rehearsal.pods
    assert "--head" in head.command and "--num-cpus=0" in head.command and "--no-monitor" in head.command
    assert "--block" in worker.command and "--num-cpus=2" in worker.command
    # the serve Service's only endpoint: the worker pod (excludeHeadPodFromServeSvc), on its own port
    assert rehearsal.url == worker.serve_url and worker.serve_port != head.serve_port
    r = chat(rehearsal.url)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] is not None


class Load:
    """`clients` threads sending short chats back to back; each outcome (start, end, label) kept.
    A connection refused before any byte was sent is retried once, as the openai client does."""

    def __init__(self, url: str, clients: int = 2):
        self.url, self.clients, self.outcomes, self.stopping = url, clients, [], threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        self.probes = []  # (time, status) of the worker proxy's /-/healthz, KubeRay's readiness check
        self.threads.append(threading.Thread(target=self._probe, daemon=True))

    def _probe(self):
        while not self.stopping.wait(1):
            try:
                status = httpx.get(f"{self.url}/-/healthz", timeout=2).status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            self.probes.append((time.monotonic(), status))

    def _client(self):
        with httpx.Client(transport=httpx.HTTPTransport(retries=1)) as client:
            while not self.stopping.is_set():
                start = time.monotonic()
                try:
                    r = client.post(f"{self.url}/v1/chat/completions", json=chat_body(MODEL, 8),
                                    headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
                    label = str(r.status_code)
                except httpx.HTTPError as error:
                    label = type(error).__name__
                self.outcomes.append((start, time.monotonic(), label))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=40)


def gcs_server(pod) -> psutil.Process:
    procs = [p for p in psutil.Process(pod.process.pid).children(recursive=True) if p.name() == "gcs_server"]
    assert len(procs) == 1, procs
    return procs[0]


# The engine is created inside serve.replica_logging.serve_log_kept(): without it, the restarted
# Serve controller cannot recover the running replica (its is_allocated() fails on the replica's
# closed log handler), stops it and starts a new one: ~30 s of failures on this one-replica deployment.
def test_head_lost_with_gcs_fault_tolerance_keeps_serving(rehearsal):
    """Kill the head pod's gcs_server (by PID) under light load sent to the serve Service (the
    worker pod): `ray start --block` then stops the head container, what is left of it is killed
    as a container's end does (k8s/pod_init.py), the rehearsal restarts it as the kubelet would, the new GCS loads
    the cluster from Redis, the worker's raylet reconnects, and the worker's replica serves
    throughout: 0 failed."""
    head, times, problem = rehearsal.head, {}, None
    with Load(rehearsal.url) as load:
        time.sleep(2)
        times["killed"] = time.monotonic()
        gcs_server(head).kill()
        # the head container exits: Ray stops the head's other processes, its init kills the rest
        head.process.wait(timeout=60)
        times["exited"] = time.monotonic()
        try:
            attempts = rehearsal.restart(head)
            times["started"] = time.monotonic()
            apps = rehearsal.wait_running(timeout_s=120)
            times["running"] = time.monotonic()
            # Serve's controller acts again: a lightweight config change (one the replicas need not
            # reconfigure for: a replica reconfiguring leaves HAProxy's backends for ~1 s) is applied
            config = yaml.safe_load(rehearsal.service["spec"]["serveConfigV2"])
            wanted = 1000
            config["applications"][0]["deployments"][0]["max_queued_requests"] = wanted
            rehearsal.deploy(config)

            def applied():
                deployment = rehearsal.applications()["paliserve"]["deployments"]["tiny-paligemma"]
                limit = deployment["deployment_config"]["max_queued_requests"]
                return limit == wanted and deployment["status"] == "HEALTHY"

            wait_for(applied, 60, what="the new max_queued_requests applied by the controller")
            times["controller"] = time.monotonic()
        except Exception as error:  # the figures below are printed either way
            problem = error
        times["end"] = time.monotonic()
        time.sleep(2)
    outcomes, killed = load.outcomes, times["killed"]
    down = [o for o in outcomes if killed <= o[0] <= times.get("running", times["end"])]
    probes_down = [status for t, status in load.probes if killed <= t <= times.get("running", times["end"])]
    failed = [o for o in outcomes if o[2] != "200"]
    after = {k: f"{v - killed:.1f} s" for k, v in times.items() if k != "killed"}
    by_label = {label: (sum(o[2] == label for o in failed), min(o[0] for o in failed if o[2] == label) - killed,
                        max(o[0] for o in failed if o[2] == label) - killed) for label in {o[2] for o in failed}}
    print(f"\nGCS lost under load ({load.clients} clients): {len(outcomes)} requests, {len(failed)} failed "
          + ", ".join(f"{n} {label} (sent {a:.1f}-{b:.1f} s after the kill)" for label, (n, a, b) in sorted(by_label.items()))
          + f"; {sum(o[2] == '200' for o in down)} of {len(down)} served while the head was down or coming back; "
          f"after the kill: {after}; longest request {max(o[1] - o[0] for o in outcomes):.2f} s; "
          f"the worker's /-/healthz: {sum(s == 200 for s in probes_down)} of {len(probes_down)} probes 200 "
          f"meanwhile; left at the head container's end, killed: {head.left_at_end}; "
          f"its ports held at the restart: {head.port_holders or 'none'}; "
          f"recovery: {problem or f'whole again, {attempts} start(s)'}")
    assert not [o for o in outcomes if o[0] < killed and o[2] != "200"], "failures before the kill"
    assert sum(o[2] == "200" for o in down) > 0, "the worker's replica served nothing while the head was down"
    assert problem is None, problem
    assert not failed, f"{len(failed)} failed"
    assert all(s == 200 for s in probes_down), "the worker's proxy was not ready throughout (serve Service endpoint)"
    assert apps["paliserve"]["status"] == "RUNNING"
