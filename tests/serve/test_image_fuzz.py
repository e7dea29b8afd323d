"""Image fuzzing: whatever bytes a client sends, the gateway's decoder returns an RGB image or
raises InvalidRequest (a 400), never any other exception, and it finishes quickly.

Pure unit tests of `serve.images` (no stack). Inputs: valid PNG / JPEG / WebP files in every
colour mode the formats carry (palette, alpha, 16-bit, bilevel, CMYK, interlaced), animated and
multi-frame files, each truncated at every offset and mutated by Hypothesis (bit flips, byte
stores, insertions, deletions, duplicated ranges, PNG chunks re-checksummed so the mutation
reaches the decoder), header-only files, random bytes, huge declared dimensions and
decompression bombs. `pytest -s` prints how many inputs were tried and how they ended.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import random
import resource
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import figures
from paliserve.spec import GatewaySettings
from serve.errors import InvalidRequest
from serve.images import decode_image, open_image

SETTINGS = GatewaySettings()  # the production caps: 10 MiB, 4096 x 4096 pixels
CODES = {"invalid_image", "unsupported_image_format", "image_too_large", "image_too_complex", "invalid_base64", "remote_image_url_disabled", None}
# CPU seconds one decode may take (process CPU time, not wall time: the 2 cores are shared with
# engines and other tests). Every fuzzed input is under 10 KB; a valid 4096 x 4096 image
# decodes in ~0.3 s here.
FAST_S = 2.0
FUZZ = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

TRIED: Counter = Counter()  # outcome -> inputs
BY_TEST: Counter = Counter()  # test -> inputs


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = sum(TRIED.values())
    figures.record("image fuzz", TRIED)
    print(f"\n[image fuzz] {total} inputs decoded: " + ", ".join(f"{k}={v}" for k, v in TRIED.most_common()))
    for name, n in BY_TEST.most_common():
        print(f"[image fuzz]   {name}: {n}")


def outcome(raw: bytes, settings_: GatewaySettings = SETTINGS, limit_s: float = FAST_S, via_url: bool = False) -> str:
    """'ok' or the InvalidRequest code; any other exception propagates and fails the test."""
    start = time.process_time()
    try:
        if via_url:
            image = decode_image(raw, settings_, "image")  # raw is a str here
        else:
            image = open_image(raw, settings_, "image")
    except InvalidRequest as exc:
        assert exc.status_code == 400 and exc.param == "image", exc.body()
        assert exc.code in CODES, exc.body()
        assert exc.message
        result = exc.code or "invalid_request"
    else:
        assert isinstance(image, Image.Image) and image.mode == "RGB", image
        width, height = image.size
        assert width > 0 and height > 0 and width * height <= settings_.max_image_pixels
        result = "ok"
    elapsed = time.process_time() - start
    assert elapsed < limit_s, f"decoding took {elapsed:.2f} CPU s ({len(raw)} bytes, {result})"
    TRIED[result] += 1
    BY_TEST[_current_test()] += 1
    return result


def _current_test() -> str:
    import os

    return os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0].split("[")[0]


# ---- seed images ----------------------------------------------------------------------------


def _noise(size=(24, 16), seed=0, mode="RGB") -> Image.Image:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    if mode == "RGBA":
        alpha = Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))
        image.putalpha(alpha)
        return image
    if mode == "LA":
        image = image.convert("L")
        image.putalpha(Image.frombytes("L", size, rng.randbytes(size[0] * size[1])))
        return image
    return image if mode == "RGB" else image.convert(mode)


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIG = b"\x89PNG\r\n\x1a\n"
_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def raw_png(width, height, depth=8, ctype=2, interlace=0, seed=0, extra=(), idat=None, plte=None) -> bytes:
    """A PNG written by hand, for what Pillow cannot write: 16-bit RGB(A), 2/4-bit, Adam7."""
    rng = random.Random(seed)
    bits = _CHANNELS[ctype] * depth

    def scanlines(w, h):
        return b"".join(b"\x00" + rng.randbytes((w * bits + 7) // 8) for _ in range(h))

    if idat is None:
        if interlace:
            data = b""
            for xs, ys, dx, dy in _ADAM7:
                w, h = max(0, (width - xs + dx - 1) // dx), max(0, (height - ys + dy - 1) // dy)
                if w and h:
                    data += scanlines(w, h)
        else:
            data = scanlines(width, height)
        idat = zlib.compress(data)
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, interlace))]
    if ctype == 3:
        chunks.append(_chunk(b"PLTE", plte or rng.randbytes(3 * (1 << min(depth, 8)))))
    chunks += [_chunk(k, v) for k, v in extra]
    chunks += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return PNG_SIG + b"".join(chunks)


@functools.cache
def seeds() -> dict[str, bytes]:
    """Valid files: every mode PNG, JPEG and WebP carry, still and animated."""
    rgb, rgba = _noise(), _noise(mode="RGBA")
    frames = [_noise(seed=i) for i in (1, 2)]
    palette = _noise().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {
        "png-rgb": _save(rgb, "PNG"),
        "png-rgba": _save(rgba, "PNG"),
        "png-l": _save(_noise(mode="L"), "PNG"),
        "png-la": _save(_noise(mode="LA"), "PNG"),
        "png-1bit": _save(_noise(mode="1"), "PNG"),
        "png-palette-trns": _save(palette, "PNG", transparency=3),
        "png-i16": _save(_noise(mode="L").convert("I;16"), "PNG"),
        "png-rgb16": raw_png(24, 16, depth=16, ctype=2, seed=1),
        "png-rgba16": raw_png(24, 16, depth=16, ctype=6, seed=2),
        "png-gray2": raw_png(24, 16, depth=2, ctype=0, seed=3),
        "png-palette4": raw_png(24, 16, depth=4, ctype=3, seed=4),
        "png-interlaced": raw_png(24, 16, depth=8, ctype=2, interlace=1, seed=5),
        "apng-3-frames": _save(rgb, "PNG", save_all=True, append_images=frames, duration=50, loop=0),
        "jpeg-rgb": _save(rgb, "JPEG", quality=80),
        "jpeg-444": _save(rgb, "JPEG", quality=95, subsampling=0),
        "jpeg-gray": _save(_noise(mode="L"), "JPEG"),
        "jpeg-cmyk": _save(_noise(mode="CMYK"), "JPEG"),
        "jpeg-progressive": _save(rgb, "JPEG", progressive=True),
        "webp-lossy": _save(rgb, "WEBP", quality=80),
        "webp-lossless-alpha": _save(rgba, "WEBP", lossless=True),
        "webp-lossy-alpha": _save(rgba, "WEBP", quality=60),
        "webp-animated": _save(rgb, "WEBP", save_all=True, append_images=frames, duration=50),
    }


SEED_NAMES = sorted(seeds())


@pytest.mark.parametrize("name", SEED_NAMES)
def test_every_seed_decodes_to_rgb(name):
    assert outcome(seeds()[name]) == "ok"
    image = open_image(seeds()[name], SETTINGS, "image")
    assert image.size == (24, 16)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_truncation_at_every_offset(name):
    """Every prefix of every seed: headers cut mid-field, chunks and markers cut at and around
    their boundaries, entropy-coded data cut anywhere."""
    raw = seeds()[name]
    results = Counter(outcome(raw[:n]) for n in range(len(raw)))
    assert results["ok"] < len(raw), results  # some prefixes must be refused
    assert outcome(raw[: len(raw) // 2]) != "ok" or name.startswith(("apng", "webp-animated"))


def _fix_png_crcs(data: bytearray) -> bytearray:
    """Recompute chunk CRCs so a mutation is judged by the decoder, not the checksum."""
    if not data.startswith(PNG_SIG):
        return data
    pos = len(PNG_SIG)
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])))
        pos = end + 4
    return data


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(seeds()[name])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        # half the time in the first 64 bytes, where the headers are
        i = draw(st.one_of(st.integers(0, min(63, len(data) - 1)), st.integers(0, len(data) - 1)))
        op = draw(st.sampled_from(["flip", "store", "insert", "delete", "truncate", "duplicate", "zero"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "store":
            data[i] = draw(st.one_of(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]), st.integers(0, 255)))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[i:]
        elif op == "duplicate":
            n = draw(st.integers(1, 256))
            data[i:i] = data[i : i + n] * draw(st.integers(1, 8))
        else:
            data[i : i + draw(st.integers(1, 32))] = b"\x00" * len(data[i : i + 32])
    if draw(st.booleans()):
        data = _fix_png_crcs(data)
    return name, bytes(data)


@FUZZ
@given(mutated())
def test_mutations(case):
    _, raw = case
    outcome(raw)


@settings(FUZZ, max_examples=400)
@given(st.sampled_from(SEED_NAMES), st.integers(0, 64), st.binary(max_size=512))
def test_header_only_then_garbage(name, keep, tail):
    """A valid signature and header (or part of one) followed by anything."""
    outcome(seeds()[name][:keep] + tail)


@settings(FUZZ, max_examples=400)
@given(
    st.one_of(
        st.binary(max_size=4096),
        st.tuples(st.sampled_from([PNG_SIG, b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\xff\xff\xff\xffWEBPVP8X", b"GIF89a", b"BM", b"II*\x00"]), st.binary(max_size=2048)).map(lambda t: t[0] + t[1]),
    )
)
def test_random_bytes(raw):
    outcome(raw)


# ---- data URLs --------------------------------------------------------------------------------


_b64 = st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode())
_valid_b64 = st.sampled_from(SEED_NAMES).map(lambda n: base64.b64encode(seeds()[n]).decode())


@settings(FUZZ, max_examples=800)
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda mime, params, sep, payload: f"data:{mime}{params}{sep}{payload}",
            st.sampled_from(["", "image/png", "image/jpeg", "image/webp", "image/gif", "text/plain", "x", "image/"]),
            st.sampled_from(["", ";charset=utf-8", ";name=a.png", ";;", ";base64;base64", ";a=b;c"]),
            st.sampled_from([";base64,", ",", ";base64", ";BASE64,", ";base64,,"]),
            st.one_of(_b64, _valid_b64, st.text(max_size=100), _valid_b64.map(lambda s: s[: len(s) // 2]), _valid_b64.map(lambda s: s.rstrip("=")), _valid_b64.map(lambda s: s[:40] + " \n" + s[40:])),
        ),
        _valid_b64,
        st.sampled_from(["http://", "https://x", "HTTP://127.0.0.1/a.png", "file:///etc/passwd", "ftp://x/a.png", "data:", "//host/a.png"]),
    )
)
def test_data_urls(url):
    outcome(url, via_url=True)


@pytest.mark.parametrize(
    "url",
    [
        "data:" + "a" * 2_000_000,
        "data:image/png" + ";x" * 1_000_000,
        "data:image/png" + ";" * 2_000_000 + "base64,",
        "data:" + "a" * 1_000_000 + "/" + "a" * 1_000_000,
        "data:image/png" + ";base64" * 300_000 + "x,AAAA",
        "data:image/png;base64," + "A" * 2_000_000 + "!",
    ],
    ids=["long-mime", "many-params", "many-semicolons", "long-mime-subtype", "repeated-base64", "bad-char-at-end"],
)
def test_data_url_parsing_is_linear(url):
    """Megabytes of adversarial data-URL syntax: the regex must not backtrack for seconds."""
    outcome(url, via_url=True, limit_s=5.0)


# ---- huge dimensions and decompression bombs -------------------------------------------------


def _patched(raw: bytes, offset: int, packed: bytes) -> bytes:
    return raw[:offset] + packed + raw[offset + len(packed) :]


def _jpeg_dims(raw: bytes, width: int, height: int) -> bytes:
    sof = max(raw.find(b"\xff\xc0"), raw.find(b"\xff\xc2"))
    return _patched(raw, sof + 5, struct.pack(">HH", height, width))


def _riff(*chunks: bytes) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def _vp8x(width: int, height: int, flags: int = 0) -> bytes:
    return _webp_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))


def _vp8l_dims(raw: bytes, width: int, height: int) -> bytes:
    assert raw[12:16] == b"VP8L" and raw[20] == 0x2F
    bits = (width - 1) | (height - 1) << 14 | 1 << 28
    return _patched(raw, 21, struct.pack("<I", bits))


def _vp8_dims(raw: bytes, width: int, height: int) -> bytes:
    assert raw[12:16] == b"VP8 " and raw[23:26] == b"\x9d\x01\x2a"
    return _patched(raw, 26, struct.pack("<HH", width, height))


def _zeros_png(width: int, height: int) -> bytes:
    """A real decompression bomb: width x height of zeros, a few hundred KB on the wire."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return raw_png(width, height, idat=idat)


def bomb_cases() -> dict[str, tuple[bytes, dict]]:
    """name -> (bytes, GatewaySettings overrides); every one must be refused as image_too_large."""
    webp_lossy, webp_lossless = seeds()["webp-lossy"], seeds()["webp-lossless-alpha"]
    jpeg = seeds()["jpeg-rgb"]
    return {
        "png-ihdr-100000x100000": (raw_png(100_000, 100_000, idat=zlib.compress(b"\x00" * 64)), {}),
        "png-ihdr-100000x100000-over-pillow-limit": (raw_png(100_000, 100_000, idat=zlib.compress(b"\x00" * 64)), {"max_image_pixels": 10**12}),
        "png-ihdr-2^31-1-square": (raw_png(2**31 - 1, 2**31 - 1, idat=b""), {}),
        "png-ihdr-1x2^31-1": (raw_png(1, 2**31 - 1, idat=b""), {}),
        "png-ihdr-4097x4096-just-over-cap": (raw_png(4097, 4096, idat=b""), {}),
        "png-ihdr-10000x10000-pillow-warning-range": (raw_png(10_000, 10_000, idat=b""), {"max_image_pixels": 10**9}),
        "png-zeros-5000x5000": (_zeros_png(5000, 5000), {}),
        "png-rgba16-4096x4097": (raw_png(4096, 4097, depth=16, ctype=6, idat=b""), {}),
        "apng-huge-canvas": (bytes(_fix_png_crcs(bytearray(_patched(seeds()["apng-3-frames"], 16, struct.pack(">II", 60_000, 60_000))))), {}),
        "jpeg-sof-65535x65535": (_jpeg_dims(jpeg, 65535, 65535), {}),
        "jpeg-sof-5000x5000": (_jpeg_dims(jpeg, 5000, 5000), {}),
        "jpeg-progressive-sof-65535x65535": (_jpeg_dims(seeds()["jpeg-progressive"], 65535, 65535), {}),
        "webp-vp8-16383x16383": (_vp8_dims(webp_lossy, 16383, 16383), {}),
        "webp-vp8l-16384x16384": (_vp8l_dims(webp_lossless, 16384, 16384), {}),
        "webp-vp8l-4097x4097": (_vp8l_dims(webp_lossless, 4097, 4097), {}),
        "webp-vp8x-canvas-2^24": (_riff(_vp8x(1 << 24, 1 << 24), webp_lossy[12:]), {}),
        "webp-vp8x-animated-canvas-16384": (_riff(_vp8x(16384, 16384, flags=0x02), _webp_chunk(b"ANIM", b"\x00" * 6)), {}),
    }


@pytest.mark.parametrize("name", sorted(bomb_cases()))
def test_huge_dimensions_are_refused_before_decoding(name):
    raw, overrides = bomb_cases()[name]
    assert outcome(raw, SETTINGS.model_copy(update=overrides), limit_s=1.0) == "image_too_large"


def test_bomb_under_the_cap_decodes_in_bounded_time():
    """4096 x 4096 of zeros (exactly the cap, ~50 KB on the wire) is a legitimate image."""
    raw = _zeros_png(4096, 4096)
    assert len(raw) < 100_000
    assert outcome(raw, limit_s=10.0) == "ok"


def test_png_text_and_icc_bombs():
    """Compressed ancillary chunks that inflate to 100 MB: zTXt, iTXt, iCCP."""
    inflated = zlib.compress(b"\x00" * 100_000_000, 9)
    cases = {
        "zTXt": raw_png(24, 16, extra=[(b"zTXt", b"Comment\x00\x00" + inflated)]),
        "iTXt": raw_png(24, 16, extra=[(b"iTXt", b"Comment\x00\x01\x00en\x00Comment\x00" + inflated)]),
        "iCCP": raw_png(24, 16, extra=[(b"iCCP", b"icc\x00\x00" + inflated)]),
        "many-tEXt": raw_png(24, 16, extra=[(b"tEXt", b"k%d\x00" % i + b"v" * 1000) for i in range(3000)]),
    }
    for name, raw in cases.items():
        assert outcome(raw) in {"ok", "invalid_image", "image_too_large"}, name


def test_idat_inflating_far_past_the_image():
    """A 24 x 16 PNG whose IDAT inflates to 100 MB: the decoder stops at the image's end."""
    raw = raw_png(24, 16, idat=zlib.compress(b"\x00" * 100_000_000, 9))
    assert outcome(raw) in {"ok", "invalid_image"}


def _memory_child() -> None:  # pragma: no cover - runs in a subprocess
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    codes = {}
    for name, (raw, overrides) in bomb_cases().items():
        try:
            open_image(raw, SETTINGS.model_copy(update=overrides), "image")
            codes[name] = "ok"
        except InvalidRequest as exc:
            codes[name] = exc.code
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"grown_mb": grown_mb, "codes": codes}))


def test_bombs_allocate_no_pixel_memory():
    """In a fresh process (so the high-water mark is its own): refusing every bomb above raises
    peak RSS by a few MB, not the gigabytes their headers ask for."""
    here = Path(__file__).resolve().parent
    code = f"import sys; sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}, {str(here.parents[1])!r}]; import test_image_fuzz as t; t.seeds(); t._memory_child()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["codes"].values()) == {"image_too_large"}, report
    assert report["grown_mb"] < 150, report
    print(f"\n[image fuzz] {len(report['codes'])} bombs refused; peak RSS grew {report['grown_mb']:.0f} MB")


# ---- animated, multi-frame and colour modes --------------------------------------------------


def test_animated_images_decode_their_first_frame():
    for name in ("apng-3-frames", "webp-animated"):
        image = open_image(seeds()[name], SETTINGS, "image")
        assert image.mode == "RGB" and image.size == (24, 16)
        assert image.tobytes() == _noise().tobytes() or name.startswith("webp")  # lossy WebP
        TRIED["ok"] += 1


def test_animated_with_a_broken_later_frame():
    """Only the first frame is decoded; damage after it must not raise anything but InvalidRequest."""
    for name in ("apng-3-frames", "webp-animated"):
        raw = seeds()[name]
        for cut in range(len(raw) // 2, len(raw), 7):
            outcome(raw[:cut] + b"\x00" * 16 + raw[cut + 16 :])


def test_other_multi_frame_formats_are_refused():
    frames = [_noise(seed=i) for i in (1, 2)]
    gif = _save(_noise(), "GIF", save_all=True, append_images=frames)
    tiff = _save(_noise(), "TIFF", save_all=True, append_images=frames)
    assert outcome(gif) == "unsupported_image_format"
    assert outcome(tiff) == "unsupported_image_format"


def test_mpo_multi_picture_jpeg():
    """Phones and cameras write JPEGs with an MPF segment; Pillow opens them as format MPO.
    They are refused as unsupported_image_format (not a 500); accepting them is a policy choice."""
    mpo = _save(_noise(), "MPO", save_all=True, append_images=[_noise(seed=1)])
    assert outcome(mpo) in {"ok", "unsupported_image_format"}


COLOUR_MODES = [
    ("PNG", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")
] + [("JPEG", m) for m in ("1", "L", "RGB", "CMYK", "YCbCr")] + [
    ("WEBP", m) for m in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "CMYK", "YCbCr", "F")
]  # every mode Pillow writes in each format (WebP converts on save)


@pytest.mark.parametrize("fmt,mode", COLOUR_MODES, ids=[f"{f}-{m}" for f, m in COLOUR_MODES])
def test_colour_modes(fmt, mode):
    image = _noise(mode=mode if mode in ("RGBA", "LA") else "RGB")
    if mode not in ("RGBA", "LA", "RGB"):
        image = image.convert(mode)
    raw = _save(image, fmt)
    assert outcome(raw) == "ok"


# ---- known slow input ------------------------------------------------------------------------


def jpeg_scan_bomb(scans: int) -> bytes:
    """A 4096 x 4096 progressive JPEG (within the pixel cap) whose last scan is repeated: each
    repeat is 33 bytes on the wire and costs a pass over every block of the image."""
    raw = _save(Image.new("RGB", (4096, 4096), (120, 30, 200)), "JPEG", progressive=True, quality=50)
    last_sos = raw.rfind(b"\xff\xda")
    return raw[:-2] + raw[last_sos:-2] * scans + b"\xff\xd9"


def test_jpeg_scan_bomb_is_refused_or_fast():
    raw = jpeg_scan_bomb(300)  # ~110 KB; 10 MiB of such scans would cost over an hour of CPU
    assert len(raw) < 120_000
    outcome(raw, limit_s=FAST_S)
    with pytest.raises(InvalidRequest) as refused:
        open_image(raw, SETTINGS, "image")
    assert refused.value.code == "image_too_complex"


def test_a_normal_progressive_jpeg_still_decodes():
    raw = _save(Image.new("RGB", (640, 480), (10, 200, 30)), "JPEG", progressive=True, quality=80)
    assert open_image(raw, SETTINGS, "image").size == (640, 480)
