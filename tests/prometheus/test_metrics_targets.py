"""serve.metrics_targets: Prometheus's list of Ray's metric endpoints without Ray's dashboard, on
a real Ray head; the writer stops with the cluster, by PID or by itself when `ray start` ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from serve.cluster import LocalCluster, auth_env
from serve.prometheus import service_discovery_file


def _targets(cluster_temp_dir: str) -> list[str]:
    try:
        content = json.loads(service_discovery_file(cluster_temp_dir).read_text())
    except (OSError, ValueError):
        return []
    return [t for group in content for t in group["targets"]]


def _ended(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster(http_port=0, metrics_targets=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_lists_the_nodes_metrics_agent_without_rays_dashboard(cluster):
    info = cluster.info
    agent = f":{info.metrics_port}"  # at the address Ray registered the node with (it listens on all)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(t.endswith(agent) for t in _targets(info.temp_dir)):
        time.sleep(0.5)
    assert any(t.endswith(agent) for t in _targets(info.temp_dir)), _targets(info.temp_dir)
    # without the dashboard Ray keeps its minimal head process, but none of its module processes
    processes = [" ".join(p.cmdline()) for p in psutil.Process(info.pid).children(recursive=True)]
    assert not [p for p in processes if "ray-dashboard-" in p]
    assert psutil.Process(info.metrics_targets_pid).is_running()


def test_exits_by_itself_once_the_watched_process_has_ended(cluster, tmp_path):
    info = cluster.info
    (tmp_path / "session_latest").mkdir()
    watched = subprocess.Popen(["sleep", "60"])
    writer = subprocess.Popen(
        [sys.executable, "-m", "serve.metrics_targets", f"--gcs-address={info.address}",
         f"--temp-dir={tmp_path}", f"--watch-pid={watched.pid}", "--period-s=0.5"],
        env={**os.environ, **auth_env(info.auth_token_path)},
    )  # fmt: skip
    try:
        time.sleep(2)
        assert writer.poll() is None
        assert _targets(str(tmp_path)), "the writer wrote no targets for the cluster it was given"
        watched.kill()
        watched.wait(5)
        writer.wait(15)
        assert writer.returncode == 0
    finally:
        for proc in (watched, writer):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_stops_with_the_cluster(cluster):  # the last test here: it stops the module's cluster
    writer = psutil.Process(cluster.info.metrics_targets_pid)
    cluster.stop()
    assert _ended(writer)
