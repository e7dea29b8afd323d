"""NoReplicaAnswer (serve/ingress.py), the middleware of Serve's fallback proxy, on fake ASGI
apps: a response that starts in time passes through, one that does not while a deployment has
no replica up becomes a 503 with Retry-After and the proxy's request is cancelled, one that does
not while every deployment has a replica up waits on, Serve's own routes are never cut, and only
the fallback proxy's callback installs it. The whole path is measured in test_faults.py."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time

import pytest

from serve.ingress import FALLBACK_CALLBACK, NoReplicaAnswer, fallback_proxy_middlewares, haproxy_binary, haproxy_env


def _run(app, path: str = "/v1/chat/completions", wait_s: float = 0.2, missing: bool = True):
    sent: list[dict] = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    async def replicas_missing():
        return missing

    async def main():
        start = time.monotonic()
        middleware = NoReplicaAnswer(app, wait_s=wait_s, retry_s=3, missing=replicas_missing)
        await middleware({"type": "http", "path": path}, receive, send)
        return time.monotonic() - start

    return asyncio.run(main()), sent


def _slow_app(delay_s: float, events: list[str]):
    async def app(scope, receive, send):
        try:
            await asyncio.sleep(delay_s)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            events.append("done")
        except asyncio.CancelledError:
            events.append("cancelled")
            await send({"type": "http.response.start", "status": 499, "headers": []})  # dropped
            raise

    return app


def test_a_response_that_starts_in_time_passes_through():
    events: list[str] = []
    _, sent = _run(_slow_app(0.01, events))
    assert events == ["done"] and [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"ok"


def test_a_request_no_replica_takes_is_answered_503_with_retry_after():
    events: list[str] = []
    elapsed, sent = _run(_slow_app(30, events))
    assert elapsed < 2, elapsed
    assert events == ["cancelled"]  # the request held in Serve is cancelled
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 503 and headers[b"retry-after"] == b"3"
    assert json.loads(sent[1]["body"])["error"]["code"] == "service_unavailable"
    assert int(headers[b"content-length"]) == len(sent[1]["body"])


def test_a_request_waits_on_while_every_deployment_has_a_replica_up():
    """A replica took it (HAProxy sent it here before marking a new replica up), or the
    deployment is scaled to zero and this request is what scales it up."""
    events: list[str] = []
    elapsed, sent = _run(_slow_app(0.6, events), missing=False)
    assert events == ["done"] and sent[0]["status"] == 200 and elapsed >= 0.6


def test_serve_routes_are_never_cut():
    events: list[str] = []
    _, sent = _run(_slow_app(0.5, events), path="/-/healthz")
    assert events == ["done"] and sent[0]["status"] == 200


def test_only_the_fallback_proxy_gets_the_middleware(monkeypatch):
    import ray

    class Context:
        def __init__(self, name):
            self.name = name

        def get_actor_name(self):
            return self.name

    for name, expected in [("SERVE_PROXY_ACTOR-fallback-ab12", 1), ("SERVE_PROXY_ACTOR-ab12", 0),
                           ("SERVE_REPLICA::paliserve#Gateway#x", 0), (None, 0)]:  # fmt: skip
        monkeypatch.setattr(ray, "get_runtime_context", lambda name=name: Context(name))
        middlewares = fallback_proxy_middlewares()
        assert len(middlewares) == expected and all(m.cls is NoReplicaAnswer for m in middlewares), name


def test_local_clusters_install_it():
    if haproxy_binary() is None:
        pytest.skip("no HAProxy: Serve's Python proxy serves every request, no fallback")
    ports = iter(range(20000, 20010))
    with tempfile.TemporaryDirectory(prefix="nra", dir="/tmp") as directory:  # HAProxy's short socket paths
        env = haproxy_env(directory, lambda: next(ports))
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == FALLBACK_CALLBACK
