"""The gateway's checks that must run before a request body is read: the caller's API key
(401 whatever the body), and the body size cap (413, before the body is buffered whole).

Plain ASGI middlewares: FastAPI parses the body before it runs dependencies, and a size cap
must also hold for chunked bodies that declare no length.
"""

from __future__ import annotations

import time

import json
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import APIError, PayloadTooLarge


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limit: Callable[[], int]):
        self.app = app
        self.limit = limit  # read per request: the cap lives in the replica's settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _send_error(send, too_large(int(declared), limit))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body reading (anything else becomes
                    # a 400); the gateway's handler turns it into the same error body
                    raise HTTPException(413, too_large(received, limit).message)
            return message

        await self.app(scope, counted, send)


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body is over {limit} bytes ({size} bytes so far); send a smaller image or raise gateway.max_body_bytes.",
        code="request_too_large",
    )


class Authenticate:
    """Maps `Authorization` to the caller's tenant (`request.state.tenant`) or answers 401; runs
    first, so it also stamps the request's arrival (`request.state.received`)."""

    def __init__(self, app: ASGIApp, authenticate: Callable[[str | None, str | None], Any], public: frozenset[str]):
        self.app = app
        self.authenticate = authenticate
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the earliest moment the application sees the request (`request.state.received`)
        scope.setdefault("state", {})["received"] = time.monotonic()
        path = scope.get("path", "").removeprefix(scope.get("root_path", "")) or "/"
        if scope["type"] != "http" or path in self.public:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        client = scope.get("client")
        try:
            tenant = self.authenticate(header.decode("latin-1") if header else None, client[0] if client else None)
        except APIError as exc:
            await _send_error(send, exc)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    # No `Connection: close`: closing a socket with unread request body makes the kernel send a
    # reset, which can destroy the response before HAProxy reads it (seen in CI: a 413's headers
    # arrived, its body did not). Kept alive, uvicorn discards the rest of the body unbuffered.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.lower().encode(), v.encode()) for k, v in error.headers.items())]  # fmt: skip
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
