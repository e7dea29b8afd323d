import base64
import io
import random
import struct
import zlib

import pytest
from PIL import Image
from serve_helpers import data_url, png_bytes

from paliserve.spec import GatewaySettings
from serve.errors import InvalidRequest
from serve.images import decode_image

SETTINGS = GatewaySettings(max_image_bytes=200_000, max_image_pixels=1000 * 1000)


def decode(url, settings=SETTINGS):
    return decode_image(url, settings, "image")


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_supported_formats_decode_to_rgb(fmt, mime):
    image = decode(data_url(png_bytes((40, 30), fmt=fmt), mime))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_bare_base64_is_accepted():
    assert decode(base64.b64encode(png_bytes()).decode()).size == (28, 28)


def rejected(url, settings=SETTINGS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode(url, settings)
    assert info.value.status_code == 400 and info.value.param == "image"
    return info.value


def test_remote_urls_are_refused_without_fetching():
    err = rejected("https://example.com/cat.png")
    assert err.code == "remote_image_url_disabled"


def test_bad_base64():
    assert rejected("data:image/png;base64,@@not base64@@").code == "invalid_base64"


def test_non_base64_data_url():
    assert "base64" in rejected("data:image/png,rawbytes").message


def test_truncated_png():
    raw = png_bytes((64, 64))
    assert rejected(data_url(raw[: len(raw) // 2])).code == "invalid_image"


def test_truncated_jpeg():
    raw = png_bytes((64, 64), fmt="JPEG")
    assert rejected(data_url(raw[: len(raw) // 2], "image/jpeg")).code == "invalid_image"


def test_garbage_bytes():
    assert rejected(data_url(b"this is not an image at all")).code == "invalid_image"


def test_empty_image():
    assert rejected("data:image/png;base64,").code == "invalid_image"


def test_unsupported_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="BMP")
    assert rejected(data_url(buf.getvalue(), "image/bmp")).code == "unsupported_image_format"


def test_byte_cap():
    settings = GatewaySettings(max_image_bytes=1000)
    noisy = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    assert len(buf.getvalue()) > 1000
    err = rejected(data_url(buf.getvalue()), settings)
    assert err.code == "image_too_large" and "1000 bytes" in err.message


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: a decompression bomb's header, tiny on the wire."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_cap_is_checked_before_decoding():
    err = rejected(data_url(_png_header_only(5000, 5000)))
    assert err.code == "image_too_large" and "pixels" in err.message


def test_decompression_bomb_beyond_pillows_own_limit():
    err = rejected(data_url(_png_header_only(100_000, 100_000)), GatewaySettings(max_image_pixels=10**12))
    assert err.code == "image_too_large"
