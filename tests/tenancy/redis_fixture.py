"""A real redis-server per test module that imports this fixture (the quota store's tests), on a
free loopback port and a directory the test owns, stopped by PID. (Not a conftest.py: the tests
import `conftest` by name, which must stay tests/conftest.py.)"""

import pytest

from serve.cluster import free_port
from serve.redis_server import LocalRedis, find_redis_server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = LocalRedis(binary, free_port(), str(tmp_path_factory.mktemp("quota-store") / "redis"))
    info = server.start()
    yield info
    server.stop()
