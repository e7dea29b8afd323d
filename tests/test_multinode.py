"""A two-node cluster on one machine, formed the way two machines form one: `paliserve up` on a
head at 127.0.0.2 and `paliserve join` of a worker at 127.0.0.3 (separate Ray nodes on distinct
loopback addresses: Linux routes all of 127.0.0.0/8 to lo), each with one logical GPU.

The plan's layout puts one engine replica on each node's GPU, behind one gateway (the separate
topology), so whichever node holds the gateway, one engine is across nodes from it. On this CPU
machine the engines run on CPU; the logical GPUs only steer placement, as real ones would.

The end of the module loses the worker node under load (its whole process tree SIGKILLed, as a
lost machine), runs `down` where it was, joins it again with its GPU (the lost replica, waiting for
room, starts there) and `down`s it, then stops the head: one cluster start-up for all of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from stack_support import chat_body, wait_for
from two_nodes import AUTH, HEAD_IP, MODEL, NODE_IP, two_node_cluster, two_node_plan
from two_nodes import paliserve as _paliserve
from two_nodes import process_tree as _tree

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]

@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir):
    with two_node_cluster(tmp_path_factory.mktemp("multinode"), two_node_plan(tiny_model_dir)) as started:
        yield started


def _ray_nodes(head: str, token: Path) -> str:
    """Ray's nodes as a separate driver sees them (its own process: this one may connect elsewhere)."""
    script = ("import json, ray; ray.init(address='%s', logging_level='ERROR', log_to_driver=False); "
              "print(json.dumps([{'ip': n['NodeManagerAddress'], 'gpus': n['Resources'].get('GPU', 0)} "
              "for n in ray.nodes() if n['Alive']]))") % head  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]


def test_nodes_are_separate_ray_nodes_on_their_own_addresses(cluster):
    nodes = json.loads(_ray_nodes(cluster["head"], cluster["token"]))
    assert sorted((n["ip"], n["gpus"]) for n in nodes) == [(HEAD_IP, 1.0), (NODE_IP, 1.0)]


def test_replicas_are_placed_as_the_plans_layout_says(cluster):
    """`up` reports each node's replicas and would warn if they were not as planned."""
    text = cluster["up_output"]
    assert f"node {HEAD_IP}: {MODEL} x1" in text and f"node {NODE_IP}: {MODEL} x1" in text, text
    assert "not placed as planned" not in text, text


def _served(ip: str, metrics_port: int) -> float:
    """Requests the engine replicas of one node finished (vLLM's counter, exported by that node's Ray)."""
    text = httpx.get(f"http://{ip}:{metrics_port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ray_vllm_request_success_total{"))


def _held_stream(url: str, barrier: threading.Barrier) -> int:
    """A streamed chat that stays open until all the others have their first chunk; its status."""
    body = {**chat_body(MODEL, 400, stream=True), "ignore_eos": True}  # a 512-token context
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as reply:
        lines = reply.iter_lines()
        if reply.status_code == 200:
            next(line for line in lines if line.startswith("data:"))
        barrier.wait(timeout=90)
        for _ in lines:
            pass
        return reply.status_code


def test_the_gateway_calls_engines_on_both_nodes(cluster):
    """The module's first requests: six streams open at once, through both nodes' ingress, on
    engines that take 4 each, so both engines serve; one of them is on the other node from the
    gateway, wherever the gateway is. Serve's router tries the engine on the gateway's node first and
    the other only while that one is full, so each stream generates 400 tokens (ignore_eos): short
    ones could all finish on the near engine, one after another, when a loaded machine staggers
    their arrival (CI, stop 21: [0, 6] with 64 tokens)."""
    nodes = [(HEAD_IP, cluster["state"]["metrics_port"]), (NODE_IP, cluster["node"]["metrics_port"])]
    barrier = threading.Barrier(6)
    urls = [cluster["head_url"], cluster["node_url"]] * 3
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda url: _held_stream(url, barrier), urls))
    assert statuses == [200] * 6
    # Ray exports each node's series every few seconds: wait until all six are counted
    counts = wait_for(lambda: (lambda c: c if sum(c) >= 6 else None)([_served(*n) for n in nodes]), 45, 1,
                      "the six requests in the nodes' metrics")  # fmt: skip
    assert all(c > 0 for c in counts), counts


def _haproxy_ports(pid: int) -> set[int]:
    """Ports the HAProxy processes among `pid`'s descendants listen on."""
    ports = set()
    for proc in _tree(pid):
        try:
            if proc.name() == "haproxy":
                ports |= {c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return ports


def test_each_node_runs_its_own_haproxy_and_serves_through_it(cluster):
    head_port, node_port = (int(cluster[k].rsplit(":", 1)[1]) for k in ("head_url", "node_url"))
    assert head_port in _haproxy_ports(cluster["state"]["pid"])
    assert node_port in _haproxy_ports(cluster["node"]["pid"])
    for url in (cluster["head_url"], cluster["node_url"]):
        reply = httpx.post(f"{url}/v1/chat/completions", json=chat_body(MODEL, 8), headers=AUTH, timeout=120)
        assert reply.status_code == 200, (url, reply.text)
        assert reply.json()["usage"]["completion_tokens"] > 0
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(MODEL, 8), timeout=60).status_code == 401


def test_join_refuses_a_wrong_token_and_a_version_mismatch(cluster, tmp_path):
    from serve.nodes import head_metadata, this_python, version_mismatch

    wrong = tmp_path / "wrong-token"
    wrong.write_text("0" * 64)
    wrong.chmod(0o600)
    before = {p.pid for p in psutil.process_iter()}
    refused = _paliserve(["join", cluster["head"], "--token-file", str(wrong), "--node-ip-address", "127.0.0.4"],
                         tmp_path / "cache", timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "refused this node" in refused.stderr, refused.stderr
    assert not (tmp_path / "cache" / "node.json").exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before and "127.0.0.4" in " ".join(p.info["cmdline"] or [])]

    import ray

    metadata = head_metadata(cluster["head"], str(cluster["token"]))  # the head's own record in its GCS
    assert metadata["ray_version"] == ray.__version__
    assert version_mismatch(metadata, ray.__version__, this_python()) is None
    message = version_mismatch(metadata, "2.9.0", this_python())
    assert message == f"the head runs Ray {ray.__version__} and this machine has Ray 2.9.0: install Ray {ray.__version__}"


LOST_NODE_MONITOR = """
import json, sys, time, ray
from ray import serve
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        replicas = [[a["Name"].split("#")[1], a["State"], a["Address"]["IPAddress"]] for a in state.actors().values()
                    if (a.get("Name") or "").startswith("SERVE_REPLICA::") and a["State"] != "DEAD"]
        app = serve.status().applications.get("paliserve")
        deployments = {n: {"status": getattr(d.status, "value", str(d.status)),
                           "replicas": {getattr(k, "value", str(k)): v for k, v in d.replica_states.items()},
                           "message": d.message[:300]} for n, d in (app.deployments.items() if app else [])}
        line = {"t": time.time(), "nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]),
                "replicas": sorted(replicas), "serve": deployments}
    except Exception as exc:  # one missed look; the next one counts
        line = {"t": time.time(), "error": repr(exc)[:300]}
    print(json.dumps(line), flush=True)
    time.sleep(1)
"""
LOAD_REQUEST_TIMEOUT_S = 60  # every client call's read/connect bound; a request ending by it is a hang
# every request the node's loss failed ends within this; measured: the held one failed 1.6-2.3 s after the
# kill (Serve's health check, every 2 s), long before Ray marks the node dead (14-15 s; 2026-11-30, 2 runs)
HANG_BOUND_S = 30


def _load_client(url: str, stream: bool, stop: threading.Event, records: list, deadline: float) -> None:
    """Chats one after another until `stop` (bounded by `deadline`), each recorded as
    (start, end, outcome, detail, retry_after)."""
    while not stop.is_set() and time.time() < deadline:
        start, retry, detail = time.time(), None, ""
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat_body(MODEL, 24 if stream else 12, stream=stream),
                              headers=AUTH, timeout=httpx.Timeout(LOAD_REQUEST_TIMEOUT_S, connect=5)) as reply:  # fmt: skip
                retry = reply.headers.get("retry-after")
                if reply.status_code != 200:
                    reply.read()
                    outcome, detail = str(reply.status_code), reply.text[:200]
                elif stream:
                    outcome = "200 without [DONE]"
                    for line in reply.iter_lines():
                        if line.startswith("data:") and '"error"' in line:
                            outcome, detail = "in-band error", line[:200]
                        elif line.strip() == "data: [DONE]" and outcome != "in-band error":
                            outcome = "200"
                else:
                    reply.read()
                    outcome = "200" if reply.json().get("usage", {}).get("completion_tokens") else "200 without tokens"
        except httpx.TimeoutException as exc:
            outcome, detail = "timeout", repr(exc)[:200]
        except httpx.HTTPError as exc:
            outcome, detail = "closed", repr(exc)[:200]
        records.append((start, time.time(), outcome, detail, retry))
        if outcome != "200":
            time.sleep(0.1)


def _lose_node(root_pid: int) -> tuple[int, list[str]]:
    """SIGKILL a node's whole process tree at once, as a lost machine: its `ray start` process
    group (`start_service` gives it one), then any descendant outside the group (Ray's worker
    processes have groups of their own). Returns (processes killed, names of those outside the group)."""
    tree = _tree(root_pid)
    outside, names = [], []
    for proc in tree:
        try:
            if os.getpgid(proc.pid) != root_pid:
                outside.append(proc)
                names.append(proc.name())
        except (OSError, psutil.Error):
            pass
    os.killpg(root_pid, signal.SIGKILL)
    for proc in outside:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not [p for p in alive if _running(p)], [p.pid for p in alive]
    return len(tree), sorted(names)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_worker_node_lost_under_load(cluster):
    """SIGKILL everything of the worker node (127.0.0.3) under steady load through the head's
    ingress: the requests it held fail fast (503 with Retry-After, or an error event in a stream),
    none hangs, the head serves on, and the engine replica that was on the lost node is started
    again where the plan has room: the head's one GPU holds its own replica, so it stays pending
    and Serve reports it. Prints the figures (pytest -s)."""
    work = cluster["work"]
    monitor_log = work / "lost-node-monitor.jsonl"
    with open(monitor_log, "w") as out:
        monitor = subprocess.Popen([sys.executable, "-c", LOST_NODE_MONITOR, cluster["head"], "240"], stdout=out,
                                   stderr=subprocess.DEVNULL, env={**os.environ, "RAY_AUTH_MODE": "token",
                                   "RAY_AUTH_TOKEN_PATH": str(cluster["token"])})  # fmt: skip

    def looks() -> list[dict]:
        # whole lines of its own (Ray prints its raylets' warnings to a driver's stdout too)
        return [json.loads(line) for line in monitor_log.read_text().split("\n")[:-1] if line.startswith('{"t": ')]

    stop, records = threading.Event(), []
    deadline = time.time() + 300
    clients = [threading.Thread(target=_load_client, args=(cluster["head_url"], stream, stop, records, deadline), daemon=True)
               for stream in (False, False, True)]  # fmt: skip
    try:
        before = wait_for(lambda: [x for x in looks() if "replicas" in x], 90, 1, "the monitor's first look")[-1]
        engine = cluster["plan"].deployments[0].name
        assert sorted(ip for name, st, ip in before["replicas"] if name == engine and st == "ALIVE") == [HEAD_IP, NODE_IP], before
        gateway_on_node = any(ip == NODE_IP and name != engine for name, _, ip in before["replicas"])
        for client in clients:
            client.start()
        time.sleep(8)  # steady load on both engines
        load = os.getloadavg()
        killed_at = time.time()
        killed, outside_group = _lose_node(cluster["node"]["pid"])

        def recovered():
            now = time.time()
            failures = [r for r in records if r[2] != "200"]
            later = [x for x in looks() if x["t"] > killed_at and "replicas" in x]
            if not later or now - killed_at < 5 or (failures and now - max(r[1] for r in failures) < 10):
                return None
            last = later[-1]
            engines = sorted((st == "ALIVE", ip) for name, st, ip in last["replicas"] if name == engine)
            states = last["serve"].get(engine, {}).get("replicas", {})
            # Ray saw the node go, the head's replica serves, the lost one's replacement waits for
            # a GPU, and Serve's status says so (1 running of 2, the other starting)
            if (last["nodes"] == [HEAD_IP] and len(engines) == 2 and engines[1] == (True, HEAD_IP) and not engines[0][0]
                    and states == {"RUNNING": 1, "STARTING": 1}):  # fmt: skip
                return last
            return None

        settled = wait_for(recovered, 180, 1, "the node's loss seen by Ray and Serve, and 10 s without failures")
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=LOAD_REQUEST_TIMEOUT_S + 10)
        monitor.terminate()
        try:
            monitor.wait(timeout=10)
        except subprocess.TimeoutExpired:
            monitor.kill()
            monitor.wait()
    history = looks()
    after = [r for r in records if r[0] >= killed_at]
    held = [r for r in records if r[0] < killed_at < r[1]]
    failed = [r for r in records if r[2] != "200"]
    ok_after = [r for r in after if r[2] == "200"]
    node_gone = next((x["t"] for x in history if x["t"] > killed_at and x.get("nodes") == [HEAD_IP]), None)
    pending = next((x for x in history if x["t"] > killed_at and "replicas" in x
                    and any(name == engine and st != "ALIVE" for name, st, _ in x["replicas"])), None)  # fmt: skip
    kinds: dict[str, int] = {}
    for r in failed:
        kind = r[2] + (" + Retry-After" if r[4] else "")
        kinds[kind] = kinds.get(kind, 0) + 1
    figures = {
        "killed": f"{killed} processes ({len(outside_group)} outside the node's process group: {outside_group})",
        "gateway on the lost node": gateway_on_node,
        "load average at the kill": " ".join(f"{x:.2f}" for x in load),
        "requests after the kill": len(after), "served after the kill": len(ok_after),
        "held at the kill": sorted((r[2], round(r[1] - r[0], 2)) for r in held),
        "failed": kinds,
        "slowest failure s": round(max((r[1] - r[0] for r in failed), default=0), 2),
        "last failure began / ended s after the kill": (round(max((r[0] for r in failed), default=killed_at) - killed_at, 2),
                                                        round(max((r[1] for r in failed), default=killed_at) - killed_at, 2)),  # fmt: skip
        "first success s after the kill": round(min((r[1] for r in ok_after), default=float("nan")) - killed_at, 2),
        "Ray saw the node lost s after the kill": round(node_gone - killed_at, 1) if node_gone else None,
        "replacement replica pending s after the kill": round(pending["t"] - killed_at, 1) if pending else None,
        "settled s after the kill": round(settled["t"] - killed_at, 1),
        "Serve's report then": settled["serve"], "replica actors then": settled["replicas"],
    }  # fmt: skip
    print("\nworker node lost under load:\n" + "\n".join(f"  {k}: {v}" for k, v in figures.items()))
    assert not [r for r in records if r[2] in ("timeout", "200 without tokens", "200 without [DONE]")], records
    assert all(r[1] - r[0] < HANG_BOUND_S for r in failed), figures
    allowed = {"503", "in-band error"} | ({"closed"} if gateway_on_node else set())
    assert all(r[2] in allowed and (r[4] or r[2] != "503") for r in failed), [r for r in failed if r[2] not in allowed or not r[4]]
    assert ok_after and records[-1][2] == "200", figures  # the head serves on
    # no room for the lost replica (the head's one GPU holds its own): it waits, and Serve says so
    assert settled["serve"][engine]["replicas"] == {"RUNNING": 1, "STARTING": 1}, settled["serve"]


def test_down_on_a_lost_node_cleans_up_and_signals_nothing_else(cluster):
    """`down` where the node was lost: its record and temp dir go, and a process that has the
    node's old PID now (here a stand-in for one) is left alone."""
    node_cache = cluster["node_cache"]
    lost = json.loads((node_cache / "node.json").read_text())
    assert not [p for p in _tree(lost["pid"]) if _running(p) and "ray" in " ".join(p.cmdline())]
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (node_cache / "node.json").write_text(json.dumps({**lost, "pid": stranger.pid}))
        left = _paliserve(["down"], node_cache)
        assert left.returncode == 0 and "left the cluster" in left.stderr, left.stderr
        assert stranger.poll() is None  # not signalled
        assert not (node_cache / "node.json").exists() and not Path(lost["temp_dir"]).exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_node_with_room_takes_the_lost_replica(cluster):
    """The lost machine comes back (or a replacement joins) with its GPU: the replica that waited
    for room since the loss starts there, as the plan's layout has it, and serves through the
    node's ingress. Prints how long that took (pytest -s)."""
    started = time.monotonic()
    rejoined = _paliserve(["join", cluster["head"], "--token-file", str(cluster["token"]), "--node-ip-address", NODE_IP,
                           "--port", cluster["node_url"].rsplit(":", 1)[1], "--num-gpus", "1"], cluster["node_cache"])  # fmt: skip
    assert rejoined.returncode == 0, rejoined.stdout + rejoined.stderr
    joined = time.monotonic()
    cluster["node"] = json.loads((cluster["node_cache"] / "node.json").read_text())

    def served_on_node():
        try:
            reply = httpx.post(f"{cluster['node_url']}/v1/chat/completions", json=chat_body(MODEL, 8), headers=AUTH, timeout=60)
        except httpx.HTTPError:
            return None
        return reply.status_code == 200 and _served(NODE_IP, cluster["node"]["metrics_port"]) > 0

    wait_for(served_on_node, 180, 2, "the waiting replica started on the rejoined node and serving")
    print(f"\nrejoined in {joined - started:.1f} s; the waiting replica served on it {time.monotonic() - started:.1f} s after the join began")


def test_down_on_the_node_leaves_and_the_head_serves_on(cluster):
    # the node that took the waiting replica leaves with `down`: its replica waits for room again
    node_tree = _tree(cluster["node"]["pid"])
    assert node_tree
    left = _paliserve(["down"], cluster["node_cache"])
    assert left.returncode == 0 and "left the cluster" in left.stderr, left.stderr
    _, alive = psutil.wait_procs(node_tree, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert psutil.pid_exists(cluster["state"]["pid"])  # the head runs on

    def served():
        try:
            return httpx.post(f"{cluster['head_url']}/v1/chat/completions", json=chat_body(MODEL, 8), headers=AUTH,
                              timeout=60).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(served, 60, 1, "the head serving after the node left")


def test_down_on_the_head_stops_the_cluster(cluster):
    head_tree = _tree(cluster["state"]["pid"])
    assert head_tree
    stopped = _paliserve(["down"], cluster["head_cache"], timeout=180)
    assert stopped.returncode == 0 and "paliserve stopped" in stopped.stderr, stopped.stderr
    _, alive = psutil.wait_procs(head_tree, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert not (cluster["head_cache"] / "cluster.json").exists()
