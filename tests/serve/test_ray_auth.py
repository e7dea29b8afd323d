"""The local cluster runs with Ray token authentication: a driver without the cluster's token
is refused, one with it connects, and the token file is readable by its owner only."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.engine

CONNECT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    print("connected", ray.get(ray.remote(num_cpus=0)(lambda: 42).remote()))
except Exception as exc:
    print("refused", type(exc).__name__)
"""


def _driver(address: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    reply = subprocess.run([sys.executable, "-c", CONNECT, address], env={**clean, **env},
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    return reply.stdout.strip().splitlines()[-1] if reply.stdout.strip() else reply.stderr[-500:]


def test_drivers_need_the_clusters_token(stack):
    address, token = f"127.0.0.1:{stack['gcs_port']}", stack["auth_token_path"]
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    wrong = os.path.join(os.path.dirname(token), "not-the-token")
    with open(wrong, "w") as f:
        f.write("0" * 64)
    try:  # the three drivers side by side: a refused one waits out Ray's connection retries
        with ThreadPoolExecutor(3) as pool:
            no_token, wrong_token, right_token = pool.map(lambda env: _driver(address, env), [
                {"RAY_AUTH_MODE": "disabled"},
                {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": wrong},
                {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}])  # fmt: skip
    finally:
        os.unlink(wrong)
    assert no_token.startswith("refused"), no_token
    assert wrong_token.startswith("refused"), wrong_token
    assert right_token == "connected 42", right_token
