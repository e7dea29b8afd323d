"""Request builders shared by the serving tests."""

from __future__ import annotations

import base64
import io

from conftest import AUTH  # noqa: F401  (the local tenant's key, sent by every serving test)


def png_bytes(size=(28, 28), color=(200, 40, 40), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def chat_body(text: str = "caption en", image: str | None = None, **extra) -> dict:
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image}})
    return {"model": "tiny-paligemma", "messages": [{"role": "user", "content": content}], **extra}


def engine_in_flight(ray_client) -> int:
    """Requests running in the session stack's (one) engine replica."""
    from ray import serve

    handle = serve.get_deployment_handle("tiny-paligemma", app_name="paliserve")
    return handle.in_flight.remote().result(timeout_s=30)
