"""Refuse request bodies over a size cap with 413, before they are buffered whole.

An ASGI middleware because the cap must hold for chunked bodies that declare no length:
the declared Content-Length is checked first, then the bytes as they arrive.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import PayloadTooLarge


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


async def _send_error(send: Send, error: PayloadTooLarge) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
