"""The KubeRay path rehearsed (k8s/rehearsal.py): the dev overlay rendered for the tiny model with
GCS fault tolerance on an operator-given Redis, its head and worker pods started as their specs
say, its serveConfigV2 deployed through the dashboard's REST API as the operator does, a chat
request served through it; then the GCS server killed under light load and started again.

Both Redis servers (the quota store and the GCS store) are real `redis-server`s on loopback
ports of this test, with passwords that reach the pods through the Secrets the operator would
create. Ports 31000-31999.
"""

from __future__ import annotations

import subprocess
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
from serve.cluster import stop_process_tree
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
        run.started_s = time.monotonic() - started
        run.url = f"http://127.0.0.1:{plan.http.port}"
        yield run
    finally:
        run.stop()
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
    r = chat(rehearsal.url)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] is not None
