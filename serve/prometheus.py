"""A local Prometheus server that scrapes the Ray cluster through Ray's service-discovery file.

It listens on loopback on a port chosen here, keeps its config and time series in a directory
it creates, and is stopped by the PID it was started with (after checking that PID still runs
this server's config), so it never touches another Prometheus on the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

# Ray's dashboard (its ReportHead) rewrites this file in the session directory every few
# seconds with the metrics-export address of every live node.
from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

from serve.processes import ServiceInfo, start_service, stop_service

CONFIG_NAME = "prometheus.yml"


def find_prometheus() -> str | None:
    """Path of the `prometheus` binary (Debian package `prometheus`), or None."""
    return shutil.which("prometheus")


def service_discovery_file(ray_temp_dir: str | Path) -> Path:
    return Path(ray_temp_dir) / "session_latest" / PROMETHEUS_SERVICE_DISCOVERY_FILE


def scrape_config(sd_file: Path, scrape_interval_s: float) -> dict:
    interval = f"{round(scrape_interval_s * 1000)}ms"  # Prometheus durations take whole units
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "ray",
                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": interval}],
            }
        ],
    }


class PrometheusInfo(ServiceInfo):
    CONFIG_NAME = CONFIG_NAME

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalPrometheus:
    """Start `prometheus` on 127.0.0.1:`port` scraping the cluster whose temp dir is given."""

    def __init__(self, binary: str, port: int, scrape_interval_s: float = 5.0, data_dir: str | None = None):
        self.binary = binary
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="paliserve-prometheus-", dir="/tmp")
        self.info: PrometheusInfo | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ray_temp_dir: str | Path, timeout_s: float = 30) -> PrometheusInfo:
        data = Path(self.data_dir)
        config = data / CONFIG_NAME
        config.write_text(yaml.safe_dump(scrape_config(service_discovery_file(ray_temp_dir), self.scrape_interval_s)))
        log_file = data / "prometheus.log"
        cmd = [
            self.binary, f"--config.file={config}", f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
        ]  # fmt: skip
        with open(log_file, "ab") as log:
            proc = start_service(cmd, log)
        self.info = PrometheusInfo(proc.pid, self.port, str(data), str(log_file))
        self._wait_until_ready(proc, timeout_s)
        return self.info

    def _wait_until_ready(self, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last = self._last_log_line()
                shutil.rmtree(self.data_dir, ignore_errors=True)
                raise RuntimeError(f"prometheus exited with {proc.returncode}: {last}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        last = self._last_log_line()
        stop_prometheus(self.info)
        raise TimeoutError(f"prometheus not ready within {timeout_s}s: {last}")

    def _last_log_line(self) -> str:
        lines = Path(self.info.log_file).read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"

    def stop(self) -> None:
        if self.info is not None:
            stop_prometheus(self.info)
            self.info = None


def stop_prometheus(info: PrometheusInfo, grace_s: float = 10) -> None:
    """Stop the server `info` describes (only if its PID still runs that config), remove its data."""
    stop_service(info.pid, lambda proc: f"--config.file={info.config_file}" in proc.cmdline(), grace_s)
    shutil.rmtree(info.data_dir, ignore_errors=True)
