"""Two Ray nodes on one machine, formed the way two machines form one: `paliserve up` on a head
at 127.0.0.2 and `paliserve join` of a worker at 127.0.0.3 (Linux routes all of 127.0.0.0/8 to lo),
each with one logical GPU, for the multi-node tests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml
from conftest import PALISERVE

HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"
MODEL = "tiny-paligemma"
KEY = "sk-multinode"
AUTH = {"Authorization": f"Bearer {KEY}"}


def two_node_plan(model_dir: Path):
    from paliserve.local import tiny_plan
    from paliserve.spec import GpuLayout, GpuSlot, ReplicaBounds, TenantPlan

    plan = tiny_plan(model_dir, max_num_seqs=4)
    plan.gateway.colocate = False
    (deployment,) = plan.deployments
    deployment.replicas = ReplicaBounds(min=2, initial=2, max=2)
    deployment.ray_actor_options.num_gpus = 1
    plan.gpu_layout = [
        GpuLayout(index=i, type="logical", node=i,
                  slots=[GpuSlot(deployment=deployment.name, replica=i, share=1.0, memory_utilization=0.3)])
        for i in range(2)
    ]  # fmt: skip
    plan.gpus = plan.gpus_initial = 2
    # served on all interfaces (each node's HAProxy on its own address): only with keys
    plan.tenants = [TenantPlan(name="multinode", api_key_sha256=[hashlib.sha256(KEY.encode()).hexdigest()], models=[MODEL])]
    return plan


def paliserve(args: list[str], cache: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PALISERVE, *args], env={**os.environ, "PALISERVE_CACHE": str(cache)},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@contextmanager
def two_node_cluster(work: Path, plan) -> Iterator[dict]:
    """`up` of `plan` on the head, `join` of the node as soon as the head prints how (the engines
    wait for its GPU); everything started is stopped at the end, by PID."""
    from serve.cluster import free_port, stop_process_tree

    head_cache, node_cache = work / "head-cache", work / "node-cache"
    plan_file = work / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    token = work / "token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    head_port, node_port = free_port(), free_port()
    up = subprocess.Popen(
        [PALISERVE, "up", "--detach", "--plan", str(plan_file), "--no-prometheus", "--no-memory-check",
         "--host", "0.0.0.0", "--node-ip-address", HEAD_IP, "--port", str(head_port), "--num-gpus", "1",
         "--token-file", str(token)],
        env={**os.environ, "PALISERVE_CACHE": str(head_cache)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    started: list[psutil.Process] = []
    output: list[str] = []
    try:
        # the engines wait for the second node's GPU: join as soon as the head says how
        for line in up.stdout:
            output.append(line)
            if "join with" in line:
                break
        match = re.search(r"paliserve join (\S+) --token-file", "".join(output))
        assert match, "".join(output)
        head = match.group(1)
        assert head.startswith(f"{HEAD_IP}:")
        started += process_tree(up.pid)
        joined = paliserve(["join", head, "--token-file", str(token), "--node-ip-address", NODE_IP,
                             "--port", str(node_port), "--num-gpus", "1"], node_cache)  # fmt: skip
        assert joined.returncode == 0, joined.stdout + joined.stderr
        node = json.loads((node_cache / "node.json").read_text())
        started += process_tree(node["pid"])
        rest = up.communicate(timeout=300)[0]
        assert up.returncode == 0, "".join(output) + rest
        state = json.loads((head_cache / "cluster.json").read_text())
        started += process_tree(state["pid"])
        yield {"head": head, "token": token, "plan": plan, "state": state, "node": node, "up_output": "".join(output) + rest,
               "join_output": joined.stdout + joined.stderr,
               "head_url": f"http://{HEAD_IP}:{head_port}", "node_url": f"http://{NODE_IP}:{node_port}",
               "head_cache": head_cache, "node_cache": node_cache, "work": work}  # fmt: skip
    finally:
        if up.poll() is None:
            stop_process_tree(up.pid)
        paliserve(["down"], node_cache)
        paliserve(["down"], head_cache)
        for proc in started:  # whatever `down` left: nothing, unless it failed
            if proc.is_running():
                stop_process_tree(proc.pid)
