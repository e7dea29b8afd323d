"""A worker node joining a paliserve cluster from another machine (`paliserve join HEAD`).

`ray start --address=HEAD --block` with the head's token file, this node's address and GPUs, and
its own HAProxy ingress (Serve runs one per node holding a replica), all descending from one
process: stopping that tree takes this node out of the cluster and stops nothing else. Before
anything starts, the token file, the head's reachability and the Ray/Python versions are checked,
so a refused join says why and leaves nothing running.

The node's `ray start` environment, which its replicas inherit, also points them at what the head
published in the cluster's GCS (serve/cluster_kv.py): the head's quota store (its address, and
its password in a mode-600 file in the node's temp dir) and the live tenant set, so that a tenant's
limits and `paliserve tenants apply` hold on this node's replicas as on the head's.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serve.cluster import NO_LOG_MONITOR, SERVE_THROUGHPUT_ENV, auth_env, free_port, runs_ray_start, stop_process_tree
from serve.ingress import haproxy_env
from serve.processes import start_service


class JoinRefused(RuntimeError):
    """The node cannot join; the message says why. Nothing was left running."""


@dataclass
class NodeInfo:
    pid: int
    head: str  # the head's GCS address, host:port
    node_ip: str
    http_port: int
    temp_dir: str
    log_file: str
    metrics_port: int  # Ray's metrics export on this node (engines' and Serve's series), for Prometheus

    @property
    def url(self) -> str:
        return f"http://{self.node_ip}:{self.http_port}"


def parse_head(head: str) -> tuple[str, int]:
    host, sep, port = head.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JoinRefused(f"head address {head!r}: expected HOST:PORT, the head's Ray GCS address "
                          "(`paliserve up` prints it)")  # fmt: skip
    return host, int(port)


def check_token_file(path: str | None) -> str:
    """The absolute path of a usable token file; refused when missing, empty or readable by others."""
    if not path:
        raise JoinRefused("no token file: the head runs with Ray token authentication; copy its token file "
                          "(`paliserve up` prints where it is) to this machine and pass --token-file")  # fmt: skip
    try:
        mode = os.stat(path).st_mode
        with open(path) as f:
            empty = not f.read().strip()
    except OSError as exc:
        raise JoinRefused(f"token file {path}: {exc.strerror}") from None
    if empty:
        raise JoinRefused(f"token file {path} is empty")
    if stat.S_IMODE(mode) & 0o077:
        raise JoinRefused(f"token file {path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    return os.path.abspath(path)


def check_reachable(host: str, port: int, timeout_s: float = 5) -> str:
    """This machine's address toward the head (Ray's own default for the node's address)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            return conn.getsockname()[0]
    except OSError as exc:
        raise JoinRefused(f"cannot reach the head's Ray GCS at {host}:{port} ({exc.strerror or exc}); is "
                          "`paliserve up` running there, and is the port open from this machine?") from None  # fmt: skip


def head_metadata(head: str, token_path: str) -> dict:
    """The Ray and Python versions the head's cluster was started with, read from its GCS."""
    from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray._private.ray_constants import KV_NAMESPACE_CLUSTER
    from ray._raylet import AuthenticationTokenLoader, GcsClient

    os.environ.update(auth_env(token_path))
    _enable_token_auth()
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        raw = GcsClient(address=head).internal_kv_get(CLUSTER_METADATA_KEY, namespace=KV_NAMESPACE_CLUSTER, timeout=10)
        return json.loads(raw) if raw else {}
    except Exception as exc:  # a wrong token, or not a Ray GCS: Ray's own words
        raise JoinRefused(f"the head at {head} refused this node: {exc}") from None


def version_mismatch(metadata: dict, ray_version: str, python_version: str) -> str | None:
    """Why this machine's Ray or Python cannot join a cluster started with `metadata`, or None."""
    head_ray, head_python = metadata.get("ray_version"), metadata.get("python_version")
    if head_ray and head_ray != ray_version:
        return f"the head runs Ray {head_ray} and this machine has Ray {ray_version}: install Ray {head_ray}"
    if head_python and head_python.split(".")[:2] != python_version.split(".")[:2]:
        return f"the head runs Python {head_python} and this machine runs Python {python_version}: use Python {head_python}"
    return None


QUOTA_PASSWORD_FILE = "quota-store-password"
QUOTA_CA_FILE = "quota-store.crt"


@dataclass
class HeadServices:
    """What the head published for its nodes: its quota store, if it runs one, and whether it
    publishes its live tenant set."""

    quota_url: str | None = None
    quota_password: str | None = field(default=None, repr=False)  # never printed
    tenants: bool = False
    quota_ca: str | None = None  # the store's certificate (PEM) when it serves TLS (serve/store_tls.py)

    def env(self, temp_dir: str) -> dict[str, str]:
        """The node's replicas' environment for them; the password goes to a mode-600 file in
        the node's temp dir (removed with it by `paliserve down`), as on the head, and the store's
        certificate beside it."""
        from serve.tenancy.quotas import CA_FILE_ENV, PASSWORD_FILE_ENV, URL_ENV
        from serve.tenancy.registry import tenants_kv_env

        env = tenants_kv_env() if self.tenants else {}
        if self.quota_url:
            path = os.path.join(temp_dir, QUOTA_PASSWORD_FILE)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.quota_password or "")
            env.update({URL_ENV: self.quota_url, PASSWORD_FILE_ENV: path})
            if self.quota_ca:
                env[CA_FILE_ENV] = os.path.join(temp_dir, QUOTA_CA_FILE)
                Path(env[CA_FILE_ENV]).write_text(self.quota_ca)
        return env


def head_services(kv) -> HeadServices:
    """Read what the head published (serve/cluster_kv.py); a head that published nothing (an
    older paliserve) gives an empty HeadServices."""
    from serve.cluster_kv import QUOTA_STORE_KEY
    from serve.tenancy.registry import KV_VERSION_KEY

    try:
        raw = kv.get(QUOTA_STORE_KEY)
        store = json.loads(raw) if raw else {}
        tenants = kv.get(KV_VERSION_KEY) is not None
    except Exception as exc:  # Ray's own words, never the value
        raise JoinRefused(f"could not read the head's quota store and tenants from its GCS: {type(exc).__name__}: {exc}") from None
    return HeadServices(store.get("url"), store.get("password"), tenants, store.get("ca"))


def check_quota_store(url: str, ca: str | None = None, timeout_s: float = 5) -> None:
    """Refuse to join when the head's quota store cannot be reached from here (nor, over TLS,
    shown to be the head's by the certificate `ca`, PEM): this node's replicas would answer 503 to
    every request of a tenant with limits."""
    import ssl
    from urllib.parse import urlsplit

    from serve.store_tls import client_context

    where = urlsplit(url)
    try:
        with socket.create_connection((where.hostname, where.port), timeout=timeout_s) as raw:
            if where.scheme == "rediss":
                client_context(ca_pem=ca).wrap_socket(raw, server_hostname=where.hostname).close()
    except ssl.SSLError as exc:
        raise JoinRefused(f"the quota store at {where.hostname}:{where.port} is not the head's: its TLS certificate "
                          f"does not match the one the head published ({exc.reason or exc})") from None  # fmt: skip
    except OSError as exc:
        raise JoinRefused(f"cannot reach the head's quota store at {where.hostname}:{where.port} "
                          f"({exc.strerror or exc}): its tenants' limits need it on every node; open that port "
                          "from this machine") from None  # fmt: skip


class WorkerNode:
    """One node joined to a running head; `start` returns once Ray says the node runs."""

    def __init__(
        self,
        head: str,
        token_path: str,
        node_ip: str,
        http_port: int = 8000,
        num_gpus: int | None = None,  # `ray start` counts whole GPUs
        num_cpus: int | None = None,
        temp_dir: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.head = head
        self.token_path = token_path
        self.node_ip = node_ip
        self.http_port = http_port
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="paliserve-", dir="/tmp")  # no longer: HAProxy caps its socket paths (serve/ingress.py)
        self.env = env or {}
        self.info: NodeInfo | None = None

    def start(self, timeout_s: float = 90) -> NodeInfo:
        log_file = os.path.join(self.temp_dir, "ray-start.log")
        metrics_port = free_port()
        ray_cli = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_cli, "start", f"--address={self.head}", "--block", "--disable-usage-stats",
            f"--node-ip-address={self.node_ip}", f"--temp-dir={self.temp_dir}",
            f"--metrics-export-port={metrics_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", NO_LOG_MONITOR,
        ]  # fmt: skip
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        # Serve's HAProxy on a worker node listens on this port (the head's on the cluster's HTTP port)
        env = {**SERVE_THROUGHPUT_ENV, **haproxy_env(self.temp_dir, free_port), **os.environ,
               "VLLM_HOST_IP": self.node_ip, "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(self.http_port), **auth_env(self.token_path), **self.env}  # fmt: skip
        with open(log_file, "ab") as log:
            proc = start_service(cmd, log, env)
        self.info = NodeInfo(proc.pid, self.head, self.node_ip, self.http_port, self.temp_dir, log_file, metrics_port)
        try:
            self._wait(proc, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.info

    def _wait(self, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = Path(self.info.log_file).read_text(errors="replace")
            if proc.poll() is not None:
                raise JoinRefused(f"ray start exited with {proc.returncode}: {_last_error(text)}")
            if "Ray runtime started" in text:
                return
            time.sleep(0.25)
        raise JoinRefused(f"the node did not start within {timeout_s:g} s; see {self.info.log_file}")

    def stop(self) -> None:
        """Stop this node's process tree, if its root is still the `ray start` this node ran (its
        --temp-dir in the command line): after the node was lost (killed, the machine rebooted),
        its PID may be another process's now."""
        if self.info is None:
            return
        stop_process_tree(self.info.pid, is_ours=runs_ray_start(self.info.temp_dir))
        shutil.rmtree(self.info.temp_dir, ignore_errors=True)
        self.info = None


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line or "mismatch" in line]
    return (errors or lines or ["(no output)"])[-1]


def write_node_state(path: Path, info: NodeInfo) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(info), indent=2))


def read_node_state(path: Path) -> NodeInfo | None:
    if not path.exists():
        return None
    return NodeInfo(**json.loads(path.read_text()))


def this_python() -> str:
    return platform.python_version()
