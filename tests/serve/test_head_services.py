"""What a joined node's replicas get from the head without a cluster: the quota store listening on
the head's address too (with its password, over TLS only), what the head publishes for the nodes and what
`paliserve join` makes of it (the environment, the password in a mode-600 file, the store's
reachability); and `paliserve down` on the head signalling only the `ray start` it recorded."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess

import psutil
import pytest
import redis
from conftest import PALISERVE

from paliserve.spec import TenantLimits
from serve.cluster import ClusterInfo, LocalCluster, free_port, read_quota_store_state, write_state
from serve.cluster_kv import QUOTA_STORE_KEY, MemoryKV
from serve.nodes import QUOTA_CA_FILE, QUOTA_PASSWORD_FILE, JoinRefused, check_quota_store, head_services
from serve.redis_server import LocalRedis, find_redis_server
from serve.store_tls import client_context, self_signed
from serve.tenancy.quotas import CA_FILE_ENV, PASSWORD_ENV, PASSWORD_FILE_ENV, URL_ENV, QuotaStore
from serve.tenancy.registry import TENANTS_KV_ENV, publish_tenants

HEAD_IP = "127.0.0.2"  # Linux routes all of 127.0.0.0/8 to lo: an address other than 127.0.0.1


@pytest.fixture(scope="module")
def head_store(tmp_path_factory):
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = LocalRedis(binary, free_port(), str(tmp_path_factory.mktemp("head") / "quota-store"), host=HEAD_IP)
    info = server.start()
    yield info
    server.stop()


def test_the_store_listens_on_the_heads_address_too_over_tls_only_and_always_asks_for_its_password(head_store):
    assert head_store.url == f"rediss://{HEAD_IP}:{head_store.port}/0"
    config = open(head_store.config_file).read()
    assert f"bind 127.0.0.1 {HEAD_IP}\n" in config and "protected-mode yes" in config
    assert "port 0\n" in config and f"tls-port {head_store.port}\n" in config
    assert stat.S_IMODE(os.stat(os.path.join(head_store.data_dir, "tls.key")).st_mode) == 0o600
    password = open(head_store.password_file).read().strip()
    for host in ("127.0.0.1", HEAD_IP):  # the certificate names both addresses
        assert redis.Redis(host=host, port=head_store.port, password=password, ssl=True, ssl_ca_certs=head_store.ca_file,
                           socket_timeout=5).ping()  # fmt: skip
        with client_context(head_store.ca_file).wrap_socket(socket.create_connection((host, head_store.port), timeout=5),
                                                            server_hostname=host) as conn:  # without the password
            conn.sendall(b"PING\r\n")
            assert conn.recv(64).startswith(b"-NOAUTH")
    with pytest.raises(redis.ConnectionError):  # in clear: the password never crosses the network unencrypted
        redis.Redis(host=HEAD_IP, port=head_store.port, password=password, socket_timeout=5).ping()
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):  # a client trusting nothing else
        redis.Redis(host=HEAD_IP, port=head_store.port, password=password, ssl=True, socket_timeout=5).ping()
    with pytest.raises(ConnectionRefusedError):  # nowhere else
        socket.create_connection(("127.0.0.3", head_store.port), timeout=5).close()


def test_a_loopback_head_keeps_its_store_on_127_0_0_1_only(tmp_path):
    info = LocalRedis("redis-server", free_port(), str(tmp_path / "store")).configure()
    assert info.url.startswith("redis://127.0.0.1:")
    config = open(info.config_file).read()
    assert "bind 127.0.0.1\n" in config and f"port {info.port}\n" in config and "tls" not in config and not info.ca_file


def test_the_state_records_the_stores_address_and_never_its_password(head_store, tmp_path):
    info = ClusterInfo(1, 2, 3, 4, str(tmp_path), str(tmp_path / "log"))
    write_state(tmp_path / "cluster.json", info, quota_store=head_store)
    assert read_quota_store_state(tmp_path / "cluster.json") == head_store
    assert open(head_store.password_file).read().strip() not in (tmp_path / "cluster.json").read_text()


def test_a_joined_node_gets_the_store_and_the_live_tenants_from_what_the_head_published(head_store, tmp_path, monkeypatch):
    kv = MemoryKV()
    assert head_services(kv).env(str(tmp_path)) == {}  # a head that published nothing (an older paliserve)
    head_store.publish(kv)
    publish_tenants(kv, [])
    password = open(head_store.password_file).read().strip()
    certificate = open(head_store.ca_file).read()
    assert json.loads(kv.get(QUOTA_STORE_KEY)) == {"url": head_store.url, "password": password, "ca": certificate}
    services = head_services(kv)
    assert password not in repr(services)
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    env = services.env(str(node_dir))
    path = node_dir / QUOTA_PASSWORD_FILE
    assert env == {URL_ENV: head_store.url, PASSWORD_FILE_ENV: str(path), CA_FILE_ENV: str(node_dir / QUOTA_CA_FILE),
                   TENANTS_KV_ENV: "1"}  # fmt: skip
    assert path.read_text() == password and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (node_dir / QUOTA_CA_FILE).read_text() == certificate
    check_quota_store(head_store.url, certificate)

    # a replica in that environment counts against the head's store: the first 429 at the limit
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def scenario():
        store = QuotaStore.from_env(lease_s=5)
        try:
            limits = TenantLimits(requests_per_min=2)
            return [await store.acquire("node", limits, store.new_id()) for _ in range(3)]
        finally:
            await store.aclose()

    first, second, third = asyncio.run(scenario())
    assert first is None and second is None and third.limit == "requests_per_min"


def test_a_store_the_node_cannot_reach_refuses_the_join():
    with pytest.raises(JoinRefused, match=r"cannot reach the head's quota store at 127\.0\.0\.1:\d+"):
        check_quota_store(f"redis://127.0.0.1:{free_port()}/0", timeout_s=2)


def test_a_store_whose_certificate_is_not_the_published_one_refuses_the_join(head_store, tmp_path):
    other = open(self_signed(str(tmp_path), [HEAD_IP]).cert).read()  # another store's certificate
    with pytest.raises(JoinRefused, match=r"is not the head's: its TLS certificate does not match"):
        check_quota_store(head_store.url, other, timeout_s=5)


@pytest.fixture
def stranger():
    """A process that has the recorded PID now: not ours to signal."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_stopping_a_cluster_whose_pid_runs_something_else_signals_nothing(tmp_path, stranger):
    temp_dir = tmp_path / "cluster"
    temp_dir.mkdir()
    import ray

    connected = ray.is_initialized()  # to the suite's shared cluster: stopping another must leave it be
    cluster = LocalCluster(temp_dir=str(temp_dir))
    cluster.info = ClusterInfo(stranger.pid, 2, 3, 4, str(temp_dir), str(temp_dir / "ray-start.log"))
    cluster.stop()
    assert stranger.poll() is None and not temp_dir.exists()
    assert ray.is_initialized() == connected


def test_down_on_the_head_when_its_pid_runs_something_else(tmp_path, stranger):
    cache, temp_dir = tmp_path / "cache", tmp_path / "cluster"
    temp_dir.mkdir()
    info = ClusterInfo(stranger.pid, free_port(), free_port(), free_port(), str(temp_dir), str(temp_dir / "ray-start.log"))
    write_state(cache / "cluster.json", info)
    down = subprocess.run([PALISERVE, "down"], env={**os.environ, "PALISERVE_CACHE": str(cache)}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert down.returncode == 0 and "not running" in down.stderr, down.stderr
    assert stranger.poll() is None and psutil.Process(stranger.pid).is_running()
    assert not (cache / "cluster.json").exists() and not temp_dir.exists()
