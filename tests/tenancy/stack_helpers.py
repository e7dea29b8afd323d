"""Requests against the shared stack as a given tenant."""

from __future__ import annotations

import base64
import io

import httpx

from conftest import key_of

MODEL = "tiny-paligemma"


def image_url(color=(200, 40, 40)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


IMAGE = image_url()


def chat_body(model: str = MODEL, max_tokens: int = 8, text: str = "caption en", **extra) -> dict:
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}  # fmt: skip


def chat(url: str, tenant: str | None, model: str = MODEL, **body) -> httpx.Response:
    headers = key_of(tenant) if tenant else {}
    return httpx.post(f"{url}/v1/chat/completions", json=chat_body(model, **body), headers=headers, timeout=60)
