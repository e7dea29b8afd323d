"""Fetch a client's http(s) image URL, only from hosts the operator allows.

Redirects are not followed (a redirect could lead off the allow-list); the body is read in
chunks and refused as soon as it passes the image byte cap; the whole fetch has one deadline.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from paliserve.spec import GatewaySettings
from serve.errors import InvalidRequest
from serve.images import image_too_large, open_image, refuse_remote


def is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def allowed_host(url: str, settings: GatewaySettings) -> str | None:
    """The allow-list entry that names this URL's host (`name` or `name:port`), if any."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    names = {parts.hostname.lower()}
    if parts.port is not None:
        names.add(f"{parts.hostname.lower()}:{parts.port}")
    return next((h for h in settings.remote_image_hosts if h.lower() in names), None)


async def fetch_image(url: str, settings: GatewaySettings, param: str):
    """The decoded image at `url`, or InvalidRequest naming why it could not be had."""
    if allowed_host(url, settings) is None:
        raise refuse_remote(url, settings, param)
    host = urlsplit(url).netloc
    try:
        raw = await asyncio.wait_for(_download(url, settings, param), settings.remote_image_timeout_s)
    except asyncio.TimeoutError:
        raise InvalidRequest(
            f"Fetching the image from {host} took longer than {settings.remote_image_timeout_s:g} s.",
            param=param,
            code="remote_image_timeout",
        ) from None
    except httpx.HTTPError as exc:
        raise InvalidRequest(
            f"Could not fetch the image from {host}: {type(exc).__name__}.", param=param, code="remote_image_unavailable"
        ) from None
    return await asyncio.to_thread(open_image, raw, settings, param)


async def _download(url: str, settings: GatewaySettings, param: str) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        async with client.stream("GET", url) as reply:
            if reply.status_code != 200:
                raise InvalidRequest(
                    f"Fetching the image from {urlsplit(url).netloc} returned HTTP {reply.status_code}"
                    + (" (redirects are not followed)." if reply.is_redirect else "."),
                    param=param,
                    code="remote_image_unavailable",
                )
            declared = reply.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > settings.max_image_bytes:
                raise image_too_large(int(declared), settings, param)
            body = bytearray()
            async for chunk in reply.aiter_bytes():
                body += chunk
                if len(body) > settings.max_image_bytes:
                    raise image_too_large(len(body), settings, param)
            return bytes(body)
