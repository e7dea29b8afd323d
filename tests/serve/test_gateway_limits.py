"""Configurable limits, enforced: request body size (413), request timeout (504 / in-band, the
engine request aborted), and remote image URLs fetched only from allow-listed hosts.

The body cap is checked on the session stack (its default 16 MiB). The timeout and the
allow-list need other settings: a second Serve application on the same cluster, a Gateway with
those settings in front of the session stack's own engine deployment.
"""

from __future__ import annotations

import http.server
import threading
import time

import httpx
import pytest
from serve_helpers import AUTH, chat_body, data_url, engine_in_flight, png_bytes

pytestmark = pytest.mark.engine

DEFAULT_BODY_CAP = 16 * 1024 * 1024
TIMEOUT_S = 1.5
REMOTE_TIMEOUT_S = 1.0
MAX_IMAGE_BYTES = 200_000
LONG = {"max_tokens": 2000, "temperature": 0}


def _error(reply: httpx.Response, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


# ---- body size -------------------------------------------------------------------------


def test_declared_oversized_body_is_refused_with_413(url):
    body = b'{"model": "tiny-paligemma", "messages": "' + b"x" * DEFAULT_BODY_CAP + b'"}'
    reply = httpx.post(f"{url}/v1/chat/completions", content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    assert str(DEFAULT_BODY_CAP) in _error(reply, 413, "request_too_large")["message"]


def test_chunked_oversized_body_is_refused_with_413(url):
    def chunks():
        yield b'{"model": "tiny-paligemma", "messages": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    reply = httpx.post(f"{url}/v1/chat/completions", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    _error(reply, 413, "request_too_large")


# ---- a second gateway with tight settings ------------------------------------------------


class _ImageServer(http.server.BaseHTTPRequestHandler):
    image = png_bytes()
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        if self.path == "/cat.png":
            self._send(200, self.image)
        elif self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
        elif self.path == "/huge.png":
            self._send(200, b"\0" * (MAX_IMAGE_BYTES + 1))
        elif self.path == "/slow.png":
            time.sleep(REMOTE_TIMEOUT_S * 3)
            self._send(200, self.image)
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes):
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the gateway gave up first (the slow image)
            pass

    def log_message(self, *_):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hardened(stack, ray_client, image_host):
    """URL of a Gateway with a 1.5 s request timeout and one allowed image host."""
    from ray import serve

    from serve.gateway import Gateway

    deployment = stack["plan"].deployments[0]
    engines = {deployment.model_name: serve.get_deployment_handle(deployment.name, app_name="paliserve")}
    settings = {"request_timeout_s": TIMEOUT_S, "remote_image_hosts": [image_host],
                "remote_image_timeout_s": REMOTE_TIMEOUT_S, "max_image_bytes": MAX_IMAGE_BYTES}  # fmt: skip
    app = Gateway.options(name="HardenedGateway", ray_actor_options={"num_cpus": 0}).bind(
        engines, {deployment.model_name: deployment.engine_args.max_model_len}, settings
    )
    serve.run(app, name="hardened", route_prefix="/hardened")
    try:
        yield f"{stack['url']}/hardened"
    finally:
        serve.delete("hardened")


def _wait_engine_idle(ray_client, within_s: float = 10) -> int:
    deadline = time.monotonic() + within_s
    while engine_in_flight(ray_client) and time.monotonic() < deadline:
        time.sleep(0.1)
    return engine_in_flight(ray_client)


def test_request_over_the_timeout_gets_504_and_is_aborted(hardened, ray_client):
    body = chat_body(image=data_url(png_bytes()), **LONG)
    reply = httpx.post(f"{hardened}/v1/chat/completions", json=body, timeout=60)
    assert str(TIMEOUT_S) in _error(reply, 504, "timeout")["message"]
    assert reply.elapsed.total_seconds() < TIMEOUT_S + 5
    assert _wait_engine_idle(ray_client) == 0, "the engine kept generating after the timeout"


def test_stream_over_the_timeout_ends_with_an_in_band_error(hardened, ray_client):
    body = chat_body(image=data_url(png_bytes()), stream=True, **LONG)
    with httpx.stream("POST", f"{hardened}/v1/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        events = [line.removeprefix("data: ") for line in reply.iter_lines() if line.startswith("data: ")]
    assert '"code": "timeout"' in events[-1] and "[DONE]" not in events
    assert len(events) > 3, "the stream should have carried tokens before the timeout"
    assert _wait_engine_idle(ray_client) == 0, "the engine kept generating after the timeout"


def test_image_from_an_allowed_host_is_fetched(hardened, image_host):
    body = chat_body(image=f"http://{image_host}/cat.png", max_tokens=4)
    reply = httpx.post(f"{hardened}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    "path,code",
    [
        ("/moved.png", "remote_image_unavailable"),
        ("/missing.png", "remote_image_unavailable"),
        ("/huge.png", "image_too_large"),
        ("/slow.png", "remote_image_timeout"),
    ],
)
def test_bad_remote_images_are_refused(hardened, image_host, path, code):
    body = chat_body(image=f"http://{image_host}{path}", max_tokens=4)
    _error(httpx.post(f"{hardened}/v1/chat/completions", json=body, timeout=60), 400, code)


def test_hosts_off_the_allow_list_are_never_contacted(hardened, image_host):
    port = image_host.rsplit(":", 1)[1]
    _ImageServer.hits.clear()
    body = chat_body(image=f"http://localhost:{port}/cat.png", max_tokens=4)
    error = _error(httpx.post(f"{hardened}/v1/chat/completions", json=body, timeout=60), 400, "remote_image_host_not_allowed")
    assert f"localhost:{port}" in error["message"]
    assert _ImageServer.hits == []


def test_session_stack_fetches_no_remote_image(url, image_host):
    _ImageServer.hits.clear()
    body = chat_body(image=f"http://{image_host}/cat.png", max_tokens=4)
    _error(httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60), 400, "remote_image_url_disabled")
    assert _ImageServer.hits == []
