"""API keys never reach a log file or a metric: after requests with every tenant's key (and
with unknown keys, the likeliest to be logged by an error path), no key appears anywhere in the
cluster's temp dir (Ray, Serve, vLLM and gateway logs), in Ray's metrics export or in what
`paliserve up` printed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import TEST_TENANTS
from stack_helpers import chat_body

pytestmark = pytest.mark.engine

UNKNOWN_KEYS = ["sk-unknown-0123456789", "sk-typo-in-the-key-abcdef"]


def _files_with(root: Path, secrets: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    needles = [s.encode() for s in secrets]
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits = [s for s, n in zip(secrets, needles) if n in data]
        if hits:
            found[str(path)] = hits
    return found


def test_keys_appear_in_no_log_and_no_metric(stack, url):
    keys = [key for key, *_ in TEST_TENANTS.values()] + UNKNOWN_KEYS
    # chat with the keys whose requests no other test counts; every key lists models
    for key in [TEST_TENANTS["local"][0], *UNKNOWN_KEYS]:
        headers = {"Authorization": f"Bearer {key}"}
        reply = httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=2), headers=headers, timeout=60)
        assert reply.status_code in (200, 401), reply.text
        assert key not in reply.text
    for key in keys:
        reply = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert reply.status_code in (200, 401) and key not in reply.text

    metrics = httpx.get(f"http://127.0.0.1:{stack['metrics_port']}/metrics", timeout=30).text
    assert [k for k in keys if k in metrics] == []
    assert [k for k in keys if k in stack["up_stdout"]] == []
    assert _files_with(Path(stack["temp_dir"]), keys) == {}
