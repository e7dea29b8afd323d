"""The local quota store: a `redis-server` that `paliserve up` starts when a tenant has limits.

It listens on 127.0.0.1, and also on the head's address when the cluster has one other machines
join (`paliserve up --node-ip-address`): replicas on those machines count against the same
store. It listens on a port chosen here, with a password drawn here (config and password files
mode 0600 in a directory it owns, inside the cluster's temp dir), keeps no data on disk (quota
windows are a minute long: a restarted store starts them empty), and is stopped by the PID it
was started with, after checking that PID still runs this config. The other nodes learn its
address, password and certificate from the cluster's GCS (serve/cluster_kv.py). When other
machines reach it, it serves TLS only (serve/store_tls.py), to the head's own replicas too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from serve.processes import ServiceInfo, start_service, stop_service

CONFIG_NAME = "redis.conf"
PASSWORD_NAME = "password"
LOOPBACK = "127.0.0.1"


def find_redis_server() -> str | None:
    """Path of the `redis-server` binary (Debian package `redis-server`), or None."""
    return shutil.which("redis-server")


@dataclass
class RedisInfo(ServiceInfo):
    CONFIG_NAME = CONFIG_NAME
    host: str = LOOPBACK  # the address the other nodes reach it at (it listens on 127.0.0.1 too)
    tls: bool = False  # TLS only, with the certificate in data_dir (when host is not loopback)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    @property
    def ca_file(self) -> str | None:
        from serve.store_tls import CERT_NAME

        return str(Path(self.data_dir) / CERT_NAME) if self.tls else None

    @property
    def password_file(self) -> str:
        return str(Path(self.data_dir) / PASSWORD_NAME)

    def env(self) -> dict[str, str]:
        """What a gateway needs to reach this store (serve/tenancy/quotas.py reads it)."""
        from serve.tenancy.quotas import CA_FILE_ENV, PASSWORD_FILE_ENV, URL_ENV

        return {URL_ENV: self.url, PASSWORD_FILE_ENV: self.password_file, **({CA_FILE_ENV: self.ca_file} if self.tls else {})}

    def publish(self, kv) -> None:
        """Tell the cluster's other nodes (`paliserve join`) where this store is and its password,
        through the cluster's GCS (serve/cluster_kv.py says why there)."""
        from serve.cluster_kv import QUOTA_STORE_KEY

        password = Path(self.password_file).read_text().strip()
        ca = Path(self.ca_file).read_text() if self.tls else None
        kv.put(QUOTA_STORE_KEY, json.dumps({"url": self.url, "password": password, "ca": ca}).encode())


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def bind_addresses(host: str) -> list[str]:
    """127.0.0.1 first (the process title names it, `_runs` checks it), then `host` if another."""
    return [LOOPBACK] + ([host] if host != LOOPBACK else [])


class LocalRedis:
    """Configure `redis-server` on 127.0.0.1:`port` (and `host`:`port`) in `data_dir` (created,
    mode 0700)."""

    def __init__(self, binary: str, port: int, data_dir: str, host: str = LOOPBACK):
        self.binary = binary
        self.port = port
        self.data_dir = data_dir
        self.host = host
        self.info: RedisInfo | None = None

    def configure(self) -> RedisInfo:
        """Write the config and password; the server is started by `start` (`info.env()` is
        known before, so the cluster can be given it)."""
        data = Path(self.data_dir)
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = secrets.token_hex(32)
        _write_private(data / PASSWORD_NAME, password)
        # Every client authenticates (requirepass, 256 random bits): on the head's address too,
        # where the other nodes' replicas connect. Protected mode stays on; with a password set it
        # refuses nobody, and it would refuse remote clients if the password were ever missing.
        # Reached from other machines, it serves TLS only (the password and counters cross the
        # network), with a certificate for both its addresses; clients need not present one.
        tls = self.host != LOOPBACK
        listen = [f"port {self.port}"]
        if tls:
            from serve.store_tls import self_signed

            files = self_signed(str(data), bind_addresses(self.host))
            listen = ["port 0", f"tls-port {self.port}", f"tls-cert-file {files.cert}", f"tls-key-file {files.key}",
                      f"tls-ca-cert-file {files.cert}", "tls-auth-clients no"]  # fmt: skip
        _write_private(data / CONFIG_NAME, "\n".join([
            f"bind {' '.join(bind_addresses(self.host))}", "protected-mode yes", *listen, f"dir {data}",
            f"requirepass {password}", 'save ""', "appendonly no", "daemonize no",
            f"logfile {data / 'redis.log'}", "maxmemory-policy noeviction",
        ]) + "\n")  # fmt: skip
        self.info = RedisInfo(0, self.port, str(data), str(data / "redis.log"), self.host, tls)
        return self.info

    def start(self, timeout_s: float = 15) -> RedisInfo:
        if self.info is None:
            self.configure()
        self.info.pid = start_redis(self.binary, self.info, timeout_s)
        return self.info

    def stop(self) -> None:
        if self.info is not None:
            stop_redis(self.info)
            self.info = None


def start_redis(binary: str, info: RedisInfo, timeout_s: float = 15) -> int:
    """Start `redis-server` on `info`'s config (also how a stopped store is restarted on the same
    port and directory) and return its PID once it answers."""
    with open(Path(info.data_dir) / "redis-start.log", "ab") as log:
        proc = start_service([binary, info.config_file], log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {_last_line(info.log_file)}")
        if _answers(info.port, info.ca_file):
            return proc.pid
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"redis-server not ready within {timeout_s}s: {_last_line(info.log_file)}")


def _answers(port: int, ca_file: str | None = None) -> bool:
    """The server accepts a connection (over TLS with `ca_file`) and replies to a command
    (NOAUTH counts: it is up)."""
    from serve.store_tls import client_context

    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as raw:
            s = client_context(ca_file).wrap_socket(raw, server_hostname=LOOPBACK) if ca_file else raw
            s.sendall(b"PING\r\n")
            return bool(s.recv(64))
    except OSError:
        return False


def _last_line(path: str) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(no output)"


def stop_redis(info: RedisInfo, grace_s: float = 10, remove: bool = True) -> None:
    """Stop the server `info` describes (only if its PID still runs that config); with `remove`,
    delete its directory."""
    stop_service(info.pid, lambda proc: _runs(proc, info), grace_s)
    if remove:
        shutil.rmtree(info.data_dir, ignore_errors=True)


def _runs(proc, info: RedisInfo) -> bool:
    """`proc` is this store's server: redis-server retitles itself `redis-server 127.0.0.1:PORT`."""
    command = " ".join(proc.cmdline())
    return "redis-server" in command and f"127.0.0.1:{info.port}" in command
