"""Decode client images safely: size caps before decoding, full decode to catch truncation."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

from paliserve.spec import GatewaySettings
from serve.errors import InvalidRequest

# Progressive JPEGs have about 10 scans. In entropy-coded data a 0xFF byte is followed by 0x00
# or a restart marker, so FF DA is always a real start-of-scan marker.
JPEG_SOS = b"\xff\xda"
MAX_JPEG_SCANS = 100
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S)


def decode_image(url: str, settings: GatewaySettings, param: str) -> Image.Image:
    """Turn a `data:` URL (or bare base64) into an RGB image, or raise InvalidRequest.

    http(s) URLs are refused here: fetching is serve.remote_images' job, for allowed hosts only."""
    if url.startswith(("http://", "https://")):
        raise refuse_remote(url, settings, param)
    match = _DATA_URL.match(url)
    payload = match.group("data") if match else url
    if not match and url.startswith("data:"):
        raise InvalidRequest("Image data URL must be base64-encoded (data:<mime>;base64,<data>).", param=param)
    if len(payload) > settings.max_image_bytes * 4 // 3 + 4:
        raise image_too_large(len(payload) * 3 // 4, settings, param)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"Image is not valid base64: {exc}", param=param, code="invalid_base64") from None
    if len(raw) > settings.max_image_bytes:
        raise image_too_large(len(raw), settings, param)
    return open_image(raw, settings, param)


def open_image(raw: bytes, settings: GatewaySettings, param: str) -> Image.Image:
    if not raw:
        raise InvalidRequest("Image is empty.", param=param, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format not in settings.allowed_image_formats:
                raise InvalidRequest(
                    f"Image format {image.format or 'unknown'} is not supported; "
                    f"use one of {', '.join(settings.allowed_image_formats)}.",
                    param=param,
                    code="unsupported_image_format",
                )
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise InvalidRequest(
                    f"Image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{settings.max_image_pixels} pixels.",
                    param=param,
                    code="image_too_large",
                )
            if image.format == "JPEG" and raw.count(JPEG_SOS) > MAX_JPEG_SCANS:
                raise InvalidRequest(
                    f"JPEG has {raw.count(JPEG_SOS)} scans, over the limit of {MAX_JPEG_SCANS}: each scan is a "
                    "decoding pass over the whole image.",
                    param=param,
                    code="image_too_complex",
                )
            image.load()  # decodes fully: truncated or corrupt data fails here, not in the engine
            return image.convert("RGB")
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"Image rejected as a decompression bomb: {exc}", param=param, code="image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidRequest(f"Image could not be decoded: {exc}", param=param, code="invalid_image") from None


def image_too_large(size: int, settings: GatewaySettings, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Image is {size} bytes, over the limit of {settings.max_image_bytes} bytes.",
        param=param,
        code="image_too_large",
    )


def refuse_remote(url: str, settings: GatewaySettings, param: str) -> InvalidRequest:
    host = urlsplit(url).netloc or url
    if not settings.remote_image_hosts:
        return InvalidRequest(
            "Remote image URLs are not fetched by this server; send the image inline as a "
            "base64 data URL (data:image/png;base64,...).",
            param=param,
            code="remote_image_url_disabled",
        )
    return InvalidRequest(
        f"Images are fetched only from allowed hosts, and {host} is not one of them; send the image "
        "inline as a base64 data URL instead.",
        param=param,
        code="remote_image_host_not_allowed",
    )
