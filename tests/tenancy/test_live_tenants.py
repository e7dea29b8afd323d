"""Live tenant changes through the real stack (`paliserve tenants apply` on the shared colocated
stack): a stream in flight completes, a revoked key gets 401 within 5 s of the new files, new keys
get 200, a rotation keeps both keys for its overlap, and no engine or replica process restarts.
The stack's original tenants are applied again at the end, whatever happened."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from stack_helpers import chat_body

from conftest import PALISERVE, TEST_TENANTS

pytestmark = pytest.mark.engine

REVOKE_DEADLINE_S = 5.0
NEW_KEYS = {"alice": "sk-live-alice-2", "carol": "sk-live-carol-2", "dave": "sk-live-dave"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def pids_named(pid: int, marker: str) -> set[int]:
    found = set()
    for proc in descendants(pid):
        try:
            if marker in proc.name() or any(marker in part for part in proc.cmdline()):
                found.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def apply(stack_env, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PALISERVE, "tenants", "apply", str(path)], env=stack_env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip


def write_plan(plan, path: Path) -> Path:
    path.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    return path


def status_of(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/models", headers=bearer(key), timeout=30).status_code


def chat_status(url: str, key: str) -> int:
    return httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=2), headers=bearer(key), timeout=60).status_code


class KeyWatcher:
    """Polls a key (GET /v1/models, authenticated before anything else) and records when it
    first got 401."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        self.first_401: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and self.first_401 is None:
                sent = time.time()
                if client.get(f"{self.url}/v1/models", headers=bearer(self.key)).status_code == 401:
                    self.first_401 = sent  # refused at the latest when it was sent
                self._stop.wait(0.1)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.first_401


def swapped_at(stack) -> float:
    """When the tenants directory's `..data` link was last swapped (the new set became visible)."""
    return os.lstat(Path(stack["temp_dir"]) / "tenants" / "..data").st_mtime


def test_tenants_change_live_without_restarts(stack, url, stack_env, tmp_path):
    original = stack["plan"]
    original_file = write_plan(original, tmp_path / "original.yaml")
    engines = pids_named(stack["pid"], "EngineCore")
    replicas = pids_named(stack["pid"], "ServeReplica")
    assert engines and replicas, "the stack's engine and replica processes are found"
    old_keys = {name: TEST_TENANTS[name][0] for name in ("alice", "carol")}

    rotated = original.model_copy(deep=True)
    by_name = {t.name: t for t in rotated.tenants}
    by_name["alice"].api_key_sha256.append(digest(NEW_KEYS["alice"]))  # rotation: both keys for the overlap
    by_name["carol"].api_key_sha256 = [digest(NEW_KEYS["carol"])]  # carol's leaked key revoked, a new one
    dave = by_name["local"].model_copy(update={"name": "dave", "api_key_sha256": [digest(NEW_KEYS["dave"])], "weight": 2.0})
    rotated.tenants.append(dave)
    try:
        # a stream in flight, as carol, with the key about to be revoked
        with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{url}/v1/chat/completions", headers=bearer(old_keys["carol"]),
            json=chat_body(max_tokens=1500, stream=True, ignore_eos=True),
        ) as stream:  # fmt: skip
            assert stream.status_code == 200
            lines = stream.iter_lines()
            first = next(line for line in lines if line.strip())
            assert first.startswith("data: ")
            watcher = KeyWatcher(url, old_keys["carol"])
            result = apply(stack_env, write_plan(rotated, tmp_path / "rotated.yaml"))
            first_401 = watcher.stop()
            assert result.returncode == 0, result.stdout + result.stderr
            rest = [line for line in lines if line.strip()]
        assert rest[-1] == "data: [DONE]", rest[-3:]
        assert not any('"error"' in line for line in rest), [line for line in rest if '"error"' in line]
        assert sum('"content"' in line for line in rest) > 1

        out = result.stdout
        for line in ["changed alice: keys (+1 -0)", "changed carol: keys (+1 -1)", "added dave (1 key)",
                     "every ingress replica (1) serves the new set"]:
            assert line in out, out
        secrets = [*NEW_KEYS.values(), *old_keys.values(), *map(digest, NEW_KEYS.values()), *map(digest, old_keys.values())]
        assert not any(s in out + result.stderr for s in secrets)

        swapped = swapped_at(stack)
        assert first_401 is not None and first_401 - swapped <= REVOKE_DEADLINE_S, (first_401, swapped)
        print(f"\n$ paliserve tenants apply rotated.yaml\n{out}revoked key refused {first_401 - swapped:.2f} s after the swap")
        assert status_of(url, old_keys["carol"]) == 401
        for key in (NEW_KEYS["carol"], NEW_KEYS["dave"], NEW_KEYS["alice"], old_keys["alice"]):
            assert chat_status(url, key) == 200, key

        listed = subprocess.run([PALISERVE, "tenants", "list"], env=stack_env, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        dave_row = next(line for line in listed.stdout.splitlines() if line.startswith("dave "))
        assert dave_row.split()[-1] == "1" and " 2 " in dave_row, dave_row  # one key, weight 2
        assert not any(s in listed.stdout for s in secrets)

        # the overlap ends: alice's old key revoked
        by_name["alice"].api_key_sha256 = [digest(NEW_KEYS["alice"])]
        watcher = KeyWatcher(url, old_keys["alice"])
        result = apply(stack_env, write_plan(rotated, tmp_path / "rotated-2.yaml"))
        first_401 = watcher.stop()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "changed alice: keys (+0 -1)" in result.stdout
        assert first_401 is not None and first_401 - swapped_at(stack) <= REVOKE_DEADLINE_S
        assert chat_status(url, NEW_KEYS["alice"]) == 200

        # refused: a model the cluster does not serve, an adapter of another tenant; nothing changes
        version = json.loads(subprocess.run([PALISERVE, "tenants", "list", "--json"], env=stack_env,
                                            capture_output=True, text=True, timeout=120).stdout)["versions"]
        bad = rotated.model_copy(deep=True)
        bad.tenants[0].models = ["paligemma-3b-mix-224"]
        bad.tenants[1].adapters = ["bob-style"]
        refused = apply(stack_env, write_plan(bad, tmp_path / "bad.yaml"))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refused, nothing changed" in refused.stderr and "'paligemma-3b-mix-224' is not served here" in refused.stderr
        assert "belongs to tenant 'bob'" in refused.stderr
        after = json.loads(subprocess.run([PALISERVE, "tenants", "list", "--json"], env=stack_env,
                                          capture_output=True, text=True, timeout=120).stdout)["versions"]
        assert after == version
        assert chat_status(url, NEW_KEYS["dave"]) == 200

        assert pids_named(stack["pid"], "EngineCore") == engines, "no engine restarted"
        assert pids_named(stack["pid"], "ServeReplica") == replicas, "no replica restarted"
    finally:
        restored = apply(stack_env, original_file)
        assert restored.returncode == 0, restored.stdout + restored.stderr
    assert chat_status(url, TEST_TENANTS["local"][0]) == 200
    assert chat_status(url, old_keys["carol"]) == 200 and status_of(url, NEW_KEYS["dave"]) == 401
