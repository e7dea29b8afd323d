"""`paliserve join`'s arguments and refusals that need no cluster: each says why, exits 2 and
leaves nothing running; `up`'s refusal to open a keyless plan to the network; and the placement
comparison `paliserve up` reports across nodes."""

from __future__ import annotations

import os
import socket
import subprocess
from collections import Counter

import psutil
import pytest
from conftest import PALISERVE


def _join(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    reply = subprocess.run([PALISERVE, "join", *args], env={**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # nothing left running
    assert not (tmp_path / "cache" / "node.json").exists()
    return reply


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token(tmp_path):
    path = tmp_path / "token"
    path.write_text("ab" * 32)
    path.chmod(0o600)
    return path


def test_join_without_a_token_file_is_refused(tmp_path):
    reply = _join(["127.0.0.1:6379"], tmp_path)
    assert reply.returncode == 2
    assert "no token file" in reply.stderr and "--token-file" in reply.stderr, reply.stderr


@pytest.mark.parametrize(
    "content, mode, said",
    [(None, 0o600, "No such file"), ("", 0o600, "is empty"), ("ab" * 32, 0o644, "readable by others (mode 644)")],
)
def test_join_with_an_unusable_token_file_is_refused(tmp_path, content, mode, said):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
        path.chmod(mode)
    reply = _join(["127.0.0.1:6379", "--token-file", str(path)], tmp_path)
    assert reply.returncode == 2 and said in reply.stderr and str(path) in reply.stderr, reply.stderr


def test_join_an_unreachable_head_is_refused(tmp_path, token):
    port = _closed_port()
    reply = _join([f"127.0.0.1:{port}", "--token-file", str(token)], tmp_path)
    assert reply.returncode == 2
    assert f"cannot reach the head's Ray GCS at 127.0.0.1:{port}" in reply.stderr, reply.stderr


@pytest.mark.parametrize("head", ["127.0.0.1", "127.0.0.1:70000"])
def test_join_a_malformed_head_address_is_refused(tmp_path, token, head):
    reply = _join([head, "--token-file", str(token)], tmp_path)
    assert reply.returncode == 2 and "expected HOST:PORT" in reply.stderr, reply.stderr


def test_up_refuses_to_serve_a_plan_without_tenants_beyond_loopback(tmp_path):
    import yaml

    from paliserve.local import tiny_plan

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(tiny_plan(tmp_path / "no-model").model_dump(mode="json")))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    reply = subprocess.run([PALISERVE, "up", "--plan", str(plan), "--host", "0.0.0.0", "--no-prometheus"],
                           env={**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert reply.returncode == 2 and "--host 0.0.0.0 would open serving to the network" in reply.stderr, reply.stderr
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_version_mismatch_names_both_versions():
    from serve.nodes import version_mismatch

    head = {"ray_version": "2.60.0", "python_version": "3.11.9"}
    assert version_mismatch(head, "2.60.0", "3.11.2") is None  # a patch release of Python joins
    assert version_mismatch(head, "2.59.1", "3.11.9") == (
        "the head runs Ray 2.60.0 and this machine has Ray 2.59.1: install Ray 2.60.0")
    assert version_mismatch(head, "2.60.0", "3.12.1") == (
        "the head runs Python 3.11.9 and this machine runs Python 3.12.1: use Python 3.11.9")


def test_placement_is_compared_node_by_node_whatever_the_addresses():
    from paliserve.spec import GpuLayout, GpuSlot
    from serve.placement import placement_mismatch, planned_per_node

    def gpu(index, node, *slots):
        return GpuLayout(index=index, type="L4", node=node,
                         slots=[GpuSlot(deployment=d, replica=r, share=s, memory_utilization=0.4) for d, r, s in slots])  # fmt: skip

    class Layout:  # planned_per_node reads only the layout
        gpu_layout = [gpu(0, 0, ("a", 0, 1.0)), gpu(1, 0, ("a", 0, 1.0)),  # one tensor-parallel replica on two GPUs
                      gpu(2, 1, ("b", 0, 0.5), ("b", 1, 0.5))]  # fmt: skip

    planned = planned_per_node(Layout)
    assert planned == {0: Counter({"a": 1}), 1: Counter({"b": 2})}
    assert placement_mismatch(planned, {"10.0.0.9": Counter({"b": 2}), "10.0.0.7": Counter({"a": 1})}) is None
    wrong = {"10.0.0.7": Counter({"a": 1, "b": 1}), "10.0.0.9": Counter({"b": 1})}
    assert placement_mismatch(planned, wrong) == (
        "the plan's layout has node 0: {'a': 1}; node 1: {'b': 2}, the cluster has "
        "10.0.0.7: {'a': 1, 'b': 1}; 10.0.0.9: {'b': 1}")
