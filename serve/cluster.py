"""A local Ray cluster that paliserve starts, owns and stops by process tree.

`ray start --head --block` is started here; Ray's daemons, Serve's actors and vLLM's engine
processes all descend from it (Ray's workers start new sessions, so a process group does not
hold them, but the parent chain does). Stopping that tree stops exactly what was started here
and nothing else on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from serve.ingress import haproxy_env
from serve.processes import start_service, stop_service
from serve.prometheus import PrometheusInfo
from serve.redis_server import RedisInfo


# Ray Serve's documented throughput settings (those of RAY_SERVE_THROUGHPUT_OPTIMIZED but
# gRPC between deployments): a replica's user code and router stay on its main event loop (fewer
# thread hand-offs per request, which matters most on small machines), and Serve's logs, the
# access log among them, go to Serve's log files only, buffered (flushed at once on an error),
# not also line by line to stderr, which Ray's log monitor follows and forwards.
# Ray also starts workers at niceness 15, which makes the whole serving stack yield the CPU to
# any other process on the machine; a server should not.
# Serve's controller steps every 0.5 s, not 0.1: each idle step asks the GCS for every node's
# resources, 0.045 cores of the controller's and the GCS's together on this 2-core machine;
# reactions (health checks every 2 s, autoscaling decisions) come at most 0.4 s later. Ray's
# metrics agent kept OpenTelemetry exemplar reservoirs for every series it re-exports, though no
# traces exist to sample from: a fifth of its idle CPU in a py-spy profile.
SERVE_THROUGHPUT_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_worker_niceness": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "OTEL_METRICS_EXEMPLAR_FILTER": "always_off",
}

# Ray's log monitor polls every worker's log files ten times a second to forward their lines to
# drivers; ours take none (`connect`: `log_to_driver=False`), and the engine's root-cause report reads
# the files themselves (engine_root_cause), so it would only cost a core's 1%, more under load.
NO_LOG_MONITOR = "--include-log-monitor=false"

AUTH_TOKEN_FILE = "auth_token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ClusterInfo:
    pid: int
    gcs_port: int
    http_port: int
    metrics_port: int
    temp_dir: str
    log_file: str
    auth_token_path: str = ""  # Ray token authentication: drivers need this file to connect
    node_ip: str = "127.0.0.1"  # the head's address, which other machines join (`paliserve join`)
    metrics_targets_pid: int = 0  # serve.metrics_targets, writing Prometheus's list of Ray's metric endpoints

    @property
    def address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"

    @property
    def url(self) -> str:
        return f"http://{self.node_ip}:{self.http_port}"


class LocalCluster:
    """Start a Ray head (loopback-only unless given `node_ip` and `http_host`), connect to it, run
    Serve on `http_port`. Other machines join it with `serve.nodes.WorkerNode` and the token file."""

    def __init__(
        self,
        http_port: int = 8000,
        num_cpus: int | None = None,
        num_gpus: float | None = None,
        temp_dir: str | None = None,
        env: dict[str, str] | None = None,
        dashboard: bool = False,
        metrics_targets: bool = False,
        node_ip: str = "127.0.0.1",
        http_host: str = "127.0.0.1",
        token_file: str | None = None,
    ):
        self.http_port = http_port
        self.node_ip = node_ip
        self.http_host = http_host
        self.token_file = token_file  # an operator's token (shared with the nodes beforehand), else a fresh one
        self.num_cpus = num_cpus if num_cpus is not None else max(4, (os.cpu_count() or 1) * 2)
        self.num_gpus = num_gpus
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="paliserve-", dir="/tmp")  # short: see serve/ingress.py
        self.env = env or {}
        self.dashboard = dashboard  # Ray's dashboard (its web UI and REST API)
        # Prometheus's service-discovery file, which Ray writes only from its dashboard: written by
        # serve.metrics_targets instead (unless the dashboard runs), without the dashboard's processes
        self.metrics_targets = metrics_targets
        self.info: ClusterInfo | None = None

    def start(self, timeout_s: float = 90) -> ClusterInfo:
        gcs_port, metrics_port = free_port(), free_port()
        log_file = os.path.join(self.temp_dir, "ray-start.log")
        ray_cli = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_cli, "start", "--head", "--block", "--disable-usage-stats",
            f"--port={gcs_port}", f"--node-ip-address={self.node_ip}",
            f"--temp-dir={self.temp_dir}", f"--num-cpus={self.num_cpus}",
            f"--metrics-export-port={metrics_port}",
            # Ray's other fixed default ports, so that clusters side by side (tests, a user's own
            # Ray) never meet on one
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--ray-client-server-port={free_port()}",
            NO_LOG_MONITOR,
        ]  # fmt: skip
        if self.dashboard:
            cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"]
        else:
            cmd.append("--include-dashboard=false")
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        token_path = self.token_file or _write_auth_token(self.temp_dir)
        env = {**SERVE_THROUGHPUT_ENV, **haproxy_env(self.temp_dir, free_port), **os.environ,
               "VLLM_HOST_IP": self.node_ip, "RAY_USAGE_STATS_ENABLED": "0", "DASHBOARD_METRIC_PORT": str(free_port()),
               **auth_env(token_path), **self.env}  # fmt: skip
        with open(log_file, "ab") as log:
            proc = start_service(cmd, log, env)
        self.info = ClusterInfo(proc.pid, gcs_port, self.http_port, metrics_port, self.temp_dir, log_file, token_path, self.node_ip)
        self._wait_for_gcs(proc, timeout_s)
        if self.metrics_targets and not self.dashboard:
            self.info.metrics_targets_pid = self._start_metrics_targets(env).pid
        return self.info

    def _start_metrics_targets(self, env: dict[str, str]) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "serve.metrics_targets", f"--gcs-address={self.info.address}",
               f"--temp-dir={self.temp_dir}", f"--watch-pid={self.info.pid}"]  # fmt: skip
        with open(os.path.join(self.temp_dir, "metrics-targets.log"), "ab") as log:
            return start_service(cmd, log, env)

    def _wait_for_gcs(self, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}; see {self.info.log_file}")
            if "Ray runtime started" in Path(self.info.log_file).read_text(errors="replace"):
                return
            time.sleep(0.25)
        stop_process_tree(proc.pid)
        raise TimeoutError(f"Ray did not start within {timeout_s}s; see {self.info.log_file}")

    def connect(self):
        connect(self.info)

    def serve(self, app, name: str = "paliserve", wait: bool = True):
        """Deploy `app`; with `wait=False` return at once and let `wait_until_healthy(app=name)`
        bound the wait (serve.run waits without a limit and reports only the final failure)."""
        from ray import serve

        serve.start(http_options={"host": self.http_host, "port": self.http_port})
        if wait:
            return serve.run(app, name=name, route_prefix="/")
        return serve.run_many([serve.RunTarget(target=app, name=name, route_prefix="/")], wait_for_applications_running=False)[0]

    def stop(self) -> None:
        if self.info is None:
            return
        try:
            import ray
            from ray import serve

            if ray.is_initialized() and connected_to(self.info):  # not a driver of another cluster
                serve.shutdown()
                ray.shutdown()
        except Exception:  # the cluster is being torn down either way
            pass
        if self.info.metrics_targets_pid:
            stop_service(self.info.metrics_targets_pid, runs_metrics_targets(self.info.temp_dir))
        # only while the recorded PID still runs this cluster's `ray start` (`paliserve down` reads
        # it from cluster.json: after a reboot it may be another process's)
        stop_process_tree(self.info.pid, is_ours=runs_ray_start(self.info.temp_dir))
        shutil.rmtree(self.info.temp_dir, ignore_errors=True)
        self.info = None


def connected_to(info: ClusterInfo) -> bool:
    """Whether this process's Ray driver is connected to the cluster of `info` (by its GCS port)."""
    import ray

    return ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1] == str(info.gcs_port)


def runs_ray_start(temp_dir: str):
    """A predicate for `stop_process_tree`'s `is_ours`: the process runs the `ray start` of the
    cluster or node whose --temp-dir is `temp_dir` (every one of ours has a temp dir of its own)."""
    return _runs_with_temp_dir("start", temp_dir)


def runs_metrics_targets(temp_dir: str):
    """A predicate for `stop_service`: the process runs serve.metrics_targets for the cluster of `temp_dir`."""
    return _runs_with_temp_dir("serve.metrics_targets", temp_dir)


def _runs_with_temp_dir(word: str, temp_dir: str):
    flag = f"--temp-dir={temp_dir}"

    def is_ours(proc) -> bool:
        import psutil

        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            return False
        return word in cmdline and flag in cmdline

    return is_ours


def auth_env(token_path: str) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}


def _write_auth_token(temp_dir: str) -> str:
    """A fresh random token for this cluster, readable by its owner only."""
    path = os.path.join(temp_dir, AUTH_TOKEN_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def connect(info: ClusterInfo) -> None:
    """Connect this process to the cluster as a driver, with the cluster's token."""
    import ray
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray._raylet import AuthenticationTokenLoader

    os.environ.update(auth_env(info.auth_token_path))
    # Ray reads the auth mode into its config when it is imported, and caches the token it
    # first loads: make this process see token mode and this cluster's token, even after it
    # was connected to another cluster (Ray's own `ray.init` enables tokens the same way).
    _enable_token_auth()
    AuthenticationTokenLoader.instance().reset_cache()
    ray.init(address=info.address, logging_level="WARNING", log_to_driver=False)


def stop_process_tree(pid: int, grace_s: float = 20, rest_s: float = 5, is_ours=None) -> None:
    """SIGTERM `pid` and wait up to `grace_s` for it and its descendants to end; then SIGTERM the
    descendants left, wait up to `rest_s`, and SIGKILL what is left. With `is_ours`, nothing is
    signalled unless `is_ours(psutil.Process)` says `pid` still runs what we started (as
    `serve.processes.stop_service`): a recorded PID may be another process's by now.

    The root first, alone: `ray start --block` stops its node's processes in order and a local
    cluster is gone in about 2 s, while a SIGTERM to every Ray process at once left the GCS, the
    raylet and the dashboard's processes waiting on each other past 25 s."""
    import psutil

    try:
        root = psutil.Process(pid)
        if is_ours is not None and not is_ours(root):
            return
        procs = [root, *root.children(recursive=True)]
        root.terminate()
    except psutil.NoSuchProcess:
        return
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=rest_s)
    # Late children (spawned while stopping) are descendants of the survivors.
    for proc in list(alive):
        try:
            alive.extend(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


class DeployFailed(RuntimeError):
    """Serve gave up on the application (DEPLOY_FAILED); the message is Serve's, per deployment."""

    def __init__(self, message: str, deployments: list[str]):
        super().__init__(message)
        self.deployments = deployments


def deploy_failure(app: str) -> DeployFailed | None:
    """DeployFailed with Serve's messages when application `app` is DEPLOY_FAILED, else None."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or _value(status.status) != "DEPLOY_FAILED":
        return None
    failed = {name: d.message for name, d in status.deployments.items() if _value(d.status) in ("DEPLOY_FAILED", "UNHEALTHY")}
    message = "\n".join(f"{name}: {m}" for name, m in failed.items()) or status.message or "DEPLOY_FAILED"
    return DeployFailed(message, list(failed))


def _value(status) -> str:
    return str(getattr(status, "value", status))


_LOG_PREFIX = re.compile(r"^\([^)]*\)\s+(?:ERROR|WARNING|INFO|DEBUG)\s+\S+\s+\S+\s+\[[^\]]*\]\s?")


def last_exception_line(text: str) -> str:
    """The exception line that ends a traceback (`Type: message`), with the source line above it
    when the exception has no message (a bare `AssertionError`)."""
    lines = [_LOG_PREFIX.sub("", line).rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip() and set(line.strip()) - set("^~")]
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if line[:1].isspace() or not re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            continue
        if ":" not in line and i > 0 and lines[i - 1][:1].isspace():
            return f"{line}: {lines[i - 1].strip()}"
        return line
    return lines[-1] if lines else ""


def engine_root_cause(temp_dir: str) -> str | None:
    """The exception that ended the first traceback vLLM's engine processes logged (their lines
    carry a `(EngineCore pid=N) ERROR ...` prefix): Serve's message says only that the engine failed."""
    logs = Path(temp_dir, "session_latest", "logs")
    for path in sorted(logs.glob("worker-*.out"), key=lambda p: p.stat().st_mtime):
        lines = [line for line in path.read_text(errors="replace").splitlines() if " ERROR " in line and _LOG_PREFIX.match(line)]
        bare = [_LOG_PREFIX.sub("", line) for line in lines]
        if "Traceback (most recent call last):" not in bare:
            continue
        block = []
        for line in bare[bare.index("Traceback (most recent call last):") + 1 :]:
            block.append(line)
            if line.strip() and not line[:1].isspace():
                break
        return last_exception_line("\n".join(block))
    return None


def wait_until_healthy(url: str, timeout_s: float = 300, app: str | None = None) -> dict:
    """Poll `/healthz` until 200; with `app`, raise DeployFailed as soon as Serve gives up on it."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if app is not None:
            failure = deploy_failure(app)
            if failure is not None:
                raise failure
        try:
            r = httpx.get(f"{url}/healthz", timeout=15)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s: {last}")


def write_state(
    path: Path, info: ClusterInfo, prometheus: PrometheusInfo | None = None, quota_store: RedisInfo | None = None
) -> None:
    state = asdict(info)
    state["prometheus"] = {**asdict(prometheus), "url": prometheus.url} if prometheus else None
    # the quota store's PID (stopped by `paliserve down`), port and directory; never its password
    state["quota_store"] = {**asdict(quota_store), "url": quota_store.url} if quota_store else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))


def read_state(path: Path) -> ClusterInfo | None:
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    state.pop("prometheus", None)
    state.pop("quota_store", None)
    return ClusterInfo(**state)


def read_prometheus_state(path: Path) -> PrometheusInfo | None:
    return _read_service(path, "prometheus", PrometheusInfo)


def read_quota_store_state(path: Path) -> RedisInfo | None:
    return _read_service(path, "quota_store", RedisInfo)


def _read_service(path: Path, key: str, info_class):
    """The service `write_state` recorded under `key` (its `url` is derived, not stored back)."""
    if not path.exists():
        return None
    recorded = json.loads(path.read_text()).get(key)
    if not recorded:
        return None
    recorded.pop("url", None)
    return info_class(**recorded)
