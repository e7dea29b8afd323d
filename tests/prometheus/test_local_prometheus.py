"""The local Prometheus server: config, start, scrape through a file-SD file, stop by PID. Fast:
a real `prometheus` process, no Ray (the SD file here names the server itself)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from serve.cluster import ClusterInfo, free_port, read_prometheus_state, read_state, write_state
from serve.prometheus import LocalPrometheus, find_prometheus, service_discovery_file, stop_prometheus

pytestmark = pytest.mark.skipif(find_prometheus() is None, reason="the prometheus binary is not installed")


@pytest.fixture
def ray_temp_dir(tmp_path) -> Path:
    (tmp_path / "session_latest").mkdir()
    return tmp_path


def test_scrapes_the_targets_of_rays_service_discovery_file(ray_temp_dir):
    server = LocalPrometheus(find_prometheus(), port=free_port(), scrape_interval_s=0.5)
    sd = service_discovery_file(ray_temp_dir)
    sd.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{server.port}"]}]))
    info = server.start(ray_temp_dir)
    try:
        deadline = time.monotonic() + 20
        up = []
        while time.monotonic() < deadline and not up:
            up = httpx.get(f"{info.url}/api/v1/query", params={"query": 'up{job="ray"} == 1'}).json()["data"]["result"]
            time.sleep(0.3)
        assert up and up[0]["metric"]["instance"] == f"127.0.0.1:{server.port}"
        assert str(sd) in Path(info.config_file).read_text()
    finally:
        server.stop()
    assert not Path(info.data_dir).exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{info.url}/-/ready", timeout=2)


def test_stop_leaves_a_process_that_is_not_this_server_alone(tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        stop_prometheus(_info_for(other.pid, tmp_path))
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def _info_for(pid: int, data_dir: Path):
    from serve.prometheus import PrometheusInfo

    return PrometheusInfo(pid=pid, port=1, data_dir=str(data_dir), log_file=str(data_dir / "log"))


def test_the_state_file_records_prometheus(tmp_path):
    state = tmp_path / "cluster.json"
    cluster = ClusterInfo(pid=1, gcs_port=2, http_port=3, metrics_port=4, temp_dir="/tmp/x", log_file="/tmp/x/log")
    prometheus = _info_for(5, tmp_path)
    write_state(state, cluster, prometheus)
    assert json.loads(state.read_text())["prometheus"]["url"] == prometheus.url
    assert read_state(state) == cluster and read_prometheus_state(state) == prometheus
    write_state(state, cluster)
    assert read_prometheus_state(state) is None


def test_up_without_the_binary_says_so_and_goes_on(monkeypatch, capsys):
    import serve.prometheus
    from paliserve import cli

    monkeypatch.setattr(serve.prometheus, "find_prometheus", lambda: None)
    assert cli._local_prometheus() is None
    assert "prometheus is not installed" in capsys.readouterr().err
