"""Malformed, oversized and ill-typed JSON through the stack: always a 4xx in the OpenAI error
format, never a 5xx, never a hang (every call has a timeout), and the stack still serves after.

`pytest -s` prints how many hostile bodies were sent and the status codes they got.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx
import pytest
import figures
from serve_helpers import AUTH, chat_body, data_url, png_bytes

pytestmark = pytest.mark.engine

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
GOOD_IMAGE = data_url(png_bytes())
JSON = {"Content-Type": "application/json"}
ROUTES = ["/v1/chat/completions", "/v1/vision/caption", "/v1/vision/ocr", "/v1/vision/answer", "/v1/vision/detect"]
SENT: Counter = Counter()  # status -> requests
SLOWEST: list[tuple[float, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    figures.record("hostile json", SENT)
    print(f"\n[hostile json] {sum(SENT.values())} hostile requests: " + ", ".join(f"{s}={n}" for s, n in sorted(SENT.items())))
    for elapsed, what in sorted(SLOWEST, reverse=True)[:5]:
        print(f"[hostile json]   slowest: {elapsed:.2f} s  {what}")


def post(url: str, path: str, *, json_body=None, content=None, headers=None, what: str = "") -> httpx.Response:
    kwargs = {"json": json_body} if content is None else {"content": content}
    start = time.monotonic()
    reply = httpx.post(f"{url}{path}", headers={**AUTH, **(headers or {})}, timeout=TIMEOUT, **kwargs)
    SLOWEST.append((time.monotonic() - start, what or path))
    SENT[reply.status_code] += 1
    return reply


def assert_openai_4xx(reply: httpx.Response, statuses=range(400, 500)) -> dict:
    assert reply.status_code < 500, (reply.status_code, reply.text[:500])
    assert reply.status_code in statuses, (reply.status_code, reply.text[:500])
    body = reply.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    return body["error"]


# ---- malformed JSON --------------------------------------------------------------------------


NESTED = 100_000
MALFORMED = {
    "deep-open-arrays": b"[" * NESTED,
    "deep-balanced-arrays": b"[" * NESTED + b"]" * NESTED,
    "deep-objects": b'{"a":' * NESTED + b"1" + b"}" * NESTED,
    "deep-in-messages": b'{"messages": ' + b"[" * NESTED + b"]" * NESTED + b"}",
    "deep-in-content": b'{"messages": [{"role": "user", "content": [' + b"[" * NESTED + b"]" * NESTED + b"]}]}",
    "truncated": b'{"model": "tiny-paligemma", "messages": [{"role": "us',
    "trailing-garbage": json.dumps(chat_body(image=GOOD_IMAGE)).encode() + b" }}}",
    "two-documents": b"{}{}",
    "empty": b"",
    "whitespace": b"   \n\t ",
    "null": b"null",
    "string": b'"hello"',
    "number": b"42",
    "array": b"[1, 2, 3]",
    "nan-literal": b'{"messages": NaN}',
    "int-100k-digits": b'{"max_tokens": ' + b"9" * 100_000 + b', "messages": []}',
    "float-overflow": b'{"temperature": 1e999999, "messages": []}',
    "single-quotes": b"{'messages': []}",
    "comment": b'{"messages": [] /* hi */}',
    "bom-prefixed": b"\xef\xbb\xbf" + json.dumps(chat_body()).encode(),
    "utf16": json.dumps(chat_body()).encode("utf-16"),
    "utf32": json.dumps(chat_body()).encode("utf-32"),
    "invalid-utf8-in-string": b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3\x28"}]}',
    "invalid-utf8-bare": b"\xff\xfe\xfd" * 100,
    "overlong-utf8": b'{"model": "\xc0\xaf", "messages": []}',
    "nul-bytes": b'{"messages": [\x00]}',
    "lone-surrogate-escape-text": b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    "duplicate-keys": b'{"messages": [], "messages": 5, "messages": {"a": 1}}',
    "control-chars-in-string": b'{"messages": [{"role": "user", "content": "a\x01\x02\x1f"}]}',
    "huge-key-count": b"{" + b",".join(b'"k%d": %d' % (i, i) for i in range(200_000)) + b', "messages": []}',
    "huge-array": b'{"messages": [' + b",".join([b"1"] * 1_000_000) + b"]}",
}


@pytest.mark.parametrize("path", ROUTES)
def test_malformed_bodies(url, path):
    failures = []
    for name, body in MALFORMED.items():
        try:
            reply = post(url, path, content=body, headers=JSON, what=f"{path} {name}")
            error = assert_openai_4xx(reply, statuses={400})
            assert error["type"] == "invalid_request_error", error
        except (AssertionError, httpx.HTTPError, ValueError) as exc:
            failures.append(f"{name}: {exc!r}"[:600])
    assert not failures, "\n".join(failures)


SURROGATES = {
    "model": b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',
    "model-pair": b'{"model": "\\udfff\\ud800", "messages": [{"role": "user", "content": "x"}]}',
    "model-with-image": b'{"model": "\\ud800x", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "%s"}}]}]}' % GOOD_IMAGE.encode(),
    "adapter": b'{"model": "tiny-paligemma:\\ud800", "messages": [{"role": "user", "content": "x"}]}',
    "image-url": b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,\\ud800"}}]}]}',
    "stop": b'{"stop": "\\ud800", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "%s"}}]}]}' % GOOD_IMAGE.encode(),
    "text": b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}, {"type": "image_url", "image_url": {"url": "%s"}}]}], "max_tokens": 2}' % GOOD_IMAGE.encode(),
}


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_lone_surrogates(url, name):
    """JSON escapes that decode to lone UTF-16 surrogates: valid JSON, not encodable as UTF-8.
    The model name goes into a 404 message and, through the tenancy, into metric tags."""
    reply = post(url, "/v1/chat/completions", content=SURROGATES[name], headers=JSON, what=f"surrogate {name}")
    if reply.status_code != 200:
        assert_openai_4xx(reply)


def test_lone_surrogate_in_a_task_question(url):
    task = b'{"image": "%s", "language": "en", "question": "\\ud800?", "max_tokens": 2}' % GOOD_IMAGE.encode()
    reply = post(url, "/v1/vision/answer", content=task, headers=JSON, what="surrogate question")
    if reply.status_code != 200:
        assert_openai_4xx(reply)


# ---- wrong types everywhere ----------------------------------------------------------------


WRONG = [None, True, False, 0, -1, 1.5, -1e308, 1e308, 2**64, -(2**63) - 1, "", "x", " ", [], [None], {}, {"a": 1}, [[[]]]]


def _replaced(body, path: tuple, value):
    body = json.loads(json.dumps(body))
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


def _paths(body, prefix=()):
    """Every field of a body, nested ones included."""
    if isinstance(body, dict):
        items = body.items()
    elif isinstance(body, list):
        items = enumerate(body)
    else:
        return
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


FULL_CHAT = chat_body(
    image=GOOD_IMAGE, max_tokens=2, max_completion_tokens=2, temperature=0, top_p=1, stop=["."], seed=1, n=1,
    stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}, user="u", ignore_eos=False,
    min_tokens=1, top_k=5, min_p=0.0, repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
)  # fmt: skip  (stream_options needs stream: true)
TASK_BODIES = {
    "/v1/vision/caption": {"image": GOOD_IMAGE, "language": "en", "max_tokens": 2, "model": "tiny-paligemma"},
    "/v1/vision/ocr": {"image": GOOD_IMAGE, "max_tokens": 2},
    "/v1/vision/answer": {"image": GOOD_IMAGE, "question": "what?", "max_tokens": 2},
    "/v1/vision/detect": {"image": GOOD_IMAGE, "objects": ["cat", "dog"], "max_tokens": 2},
}


@pytest.mark.parametrize("path", ["/v1/chat/completions", *TASK_BODIES])
def test_wrong_types_everywhere(url, path):
    """Each field, nested ones too, replaced by a value of each JSON type. A replacement the
    schema happens to accept (e.g. `user: null`) may be served (200); nothing may be a 5xx."""
    base = FULL_CHAT if path == "/v1/chat/completions" else TASK_BODIES[path]
    failures, statuses = [], Counter()
    for field in _paths(base):
        for value in WRONG:
            body = _replaced(base, field, value)
            if body == base:
                continue
            reply = post(url, path, json_body=body, what=f"{path} {field}={value!r}"[:120])
            statuses[reply.status_code] += 1
            if reply.status_code == 200:
                continue
            name = f"{'.'.join(map(str, field))}={value!r}"
            try:
                assert_openai_4xx(reply)
            except (AssertionError, ValueError) as exc:
                failures.append(f"{name}: {exc!r}"[:400])
    print(f"\n[hostile json] wrong types on {path}: {sum(statuses.values())} requests {dict(statuses)}")
    assert not failures, "\n".join(failures[:20])


# ---- values the schema accepts that the engine may not ------------------------------------


EDGE_VALUES = {
    "temperature-nan": b'"temperature": NaN',
    "temperature-inf": b'"temperature": Infinity',
    "top-p-nan": b'"top_p": NaN',
    "max-tokens-float-inf": b'"max_tokens": Infinity',
    "seed-2^64": b'"seed": 18446744073709551616',
    "seed-negative-2^63-1": b'"seed": -9223372036854775809',
    "seed-minus-1": b'"seed": -1',
    "seed-10^30": b'"seed": 1000000000000000000000000000000',
    "stop-empty-string": b'"stop": ""',
    "stop-list-with-empty": b'"stop": ["", ""]',
    "stop-10k-entries": b'"stop": [' + b",".join([b'"s%d"' % i for i in range(10_000)]) + b"]",
    "stop-1MB": b'"stop": "' + b"s" * 1_000_000 + b'"',
    "max-tokens-1": b'"max_tokens": 1',
    "max-tokens-context-minus-1": b'"max_tokens": 2047',
    "max-completion-tokens-10^30": b'"max_completion_tokens": 1000000000000000000000000000000',
    "stream-with-nan": b'"stream": true, "temperature": NaN',
    "user-1MB": b'"user": "' + b"u" * 1_000_000 + b'"',
    "unknown-field": b'"x": {"y": [1, 2]}',
}


@pytest.mark.parametrize("name", sorted(EDGE_VALUES))
def test_edge_values_with_a_valid_image(url, name):
    """A valid image makes these reach the engine: its validation must give a 4xx, not a 500."""
    body = json.dumps(chat_body("caption en", image=GOOD_IMAGE, max_tokens=4)).encode()
    body = body[:-1] + b", " + EDGE_VALUES[name] + b"}"
    if b'"max_tokens": ' in EDGE_VALUES[name]:
        body = body.replace(b'"max_tokens": 4, ', b"", 1)
    reply = post(url, "/v1/chat/completions", content=body, headers=JSON, what=f"edge {name}")
    if reply.status_code != 200:
        assert_openai_4xx(reply)


# ---- huge strings and many parts -----------------------------------------------------------


@pytest.mark.parametrize(
    "size,char",
    [(100_000, "x"), (1_000_000, "x"), (1_000_000, "a "), (1_000_000, "<loc0001>"), (4_000_000, "\u00e9")],
    ids=["100k-x", "1M-x", "1M-words", "1M-loc-tokens", "4M-two-byte-chars"],
)
def test_huge_text_content(url, size, char):
    """Megabytes of prompt text: refused as longer than the context, in bounded time."""
    text = (char * (size // len(char)))[:size]
    start = time.monotonic()
    reply = post(url, "/v1/chat/completions", json_body=chat_body(text, image=GOOD_IMAGE, max_tokens=2), what=f"huge text {size} {char!r}")
    elapsed = time.monotonic() - start
    error = assert_openai_4xx(reply, statuses={400})
    assert error["code"] == "context_length_exceeded", error
    print(f"\n[hostile json] {size:,}-char prompt ({char!r}) refused in {elapsed:.2f} s")


def test_many_messages_and_parts(url):
    many_messages = {"model": "tiny-paligemma", "messages": [{"role": "user", "content": "x"}] * 50_000}
    many_messages["messages"].append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": GOOD_IMAGE}}]})
    error = assert_openai_4xx(post(url, "/v1/chat/completions", json_body=many_messages, what="50k messages"), statuses={400})
    assert error["code"] == "context_length_exceeded", error
    many_parts = chat_body(image=GOOD_IMAGE)
    many_parts["messages"][0]["content"] += [{"type": "text", "text": ""}] * 100_000
    reply = post(url, "/v1/chat/completions", json_body={**many_parts, "max_tokens": 2}, what="100k empty parts")
    assert reply.status_code == 200 or assert_openai_4xx(reply)
    many_images = chat_body(image=GOOD_IMAGE)
    many_images["messages"][0]["content"] += [{"type": "image_url", "image_url": {"url": "data:,"}}] * 10_000
    error = assert_openai_4xx(post(url, "/v1/chat/completions", json_body=many_images, what="10k images"), statuses={400})
    assert error["code"] == "too_many_images", error


def test_huge_task_fields(url):
    cases = [
        ("/v1/vision/answer", {"image": GOOD_IMAGE, "question": "q" * 1_000_000}),
        ("/v1/vision/detect", {"image": GOOD_IMAGE, "objects": ["cat"] * 100_000}),
        ("/v1/vision/detect", {"image": GOOD_IMAGE, "objects": ["c" * 1_000_000]}),
        ("/v1/vision/caption", {"image": GOOD_IMAGE, "language": "e" * 1_000_000}),
        ("/v1/vision/caption", {"image": "A" * 8_000_000}),
    ]
    for path, body in cases:
        assert_openai_4xx(post(url, path, json_body=body, what=f"{path} huge field"), statuses={400})


# ---- content types, body size, keys --------------------------------------------------------


CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/octet-stream",
    "image/png",
    "",
    "application/json X-Injected: 1",
    b"\xc3\xa9/\xc3\xa9",  # non-ASCII bytes
]


@pytest.mark.parametrize("path", ROUTES)
def test_wrong_content_type(url, path):
    body = json.dumps(chat_body(image=GOOD_IMAGE) if path.endswith("completions") else TASK_BODIES[path]).encode()
    failures = []
    for content_type in CONTENT_TYPES:
        reply = post(url, path, content=body, headers={"Content-Type": content_type}, what=f"{path} {content_type!r}")
        if reply.status_code == 200:
            continue  # a JSON body under a loose content type may be served
        try:
            assert_openai_4xx(reply)
        except (AssertionError, ValueError) as exc:
            failures.append(f"{content_type!r}: {exc!r}"[:400])
    form = post(url, path, content=b"image=abc&question=q", headers={"Content-Type": "application/x-www-form-urlencoded"}, what="form")
    try:
        assert_openai_4xx(form, statuses={400})
    except (AssertionError, ValueError) as exc:
        failures.append(f"form body: {exc!r}"[:400])
    assert not failures, "\n".join(failures)


BODY_20MB = 20 * 1024 * 1024


def test_20mb_body_is_413(url):
    body = b'{"model": "tiny-paligemma", "messages": [{"role": "user", "content": "' + b"x" * BODY_20MB + b'"}]}'
    error = assert_openai_4xx(post(url, "/v1/chat/completions", content=body, headers=JSON, what="20 MB body"), statuses={413})
    assert error["code"] == "request_too_large", error


def test_20mb_image_is_refused(url):
    image = "data:image/png;base64," + "A" * BODY_20MB
    reply = post(url, "/v1/vision/caption", json_body={"image": image}, what="20 MB image field")
    assert_openai_4xx(reply, statuses={413})


def test_20mb_body_without_a_key_is_refused(url):
    body = b'{"messages": "' + b"x" * BODY_20MB + b'"}'
    reply = httpx.post(f"{url}/v1/chat/completions", content=body, headers=JSON, timeout=TIMEOUT)
    SENT[reply.status_code] += 1
    assert_openai_4xx(reply, statuses={401, 413})


BAD_KEYS = [
    b"Bearer",
    b"Basic c2stbG9jYWwtZGV2Og==",
    b"Bearer " + b"k" * 4000,
    b"Bearer \xff\xfe",
    b"Bearer sk-local-dev, Bearer sk-local-dev",
    b"Bearer sk-test-nobody",
    b"sk-local-dev",
    None,  # no header
]
WELL_FORMED = json.dumps(chat_body(image=GOOD_IMAGE)).encode()
BROKEN_BODIES = {"deep-open-arrays": MALFORMED["deep-open-arrays"], "truncated": b"{", "invalid-utf8": b"\xff"}


def _without_key(url, path, header, body) -> httpx.Response:
    headers = {**JSON, "Authorization": header} if header is not None else JSON
    if path == "/v1/models":
        reply = httpx.get(f"{url}{path}", headers=headers, timeout=TIMEOUT)
    else:
        reply = httpx.post(f"{url}{path}", content=body, headers=headers, timeout=TIMEOUT)
    SENT[reply.status_code] += 1
    return reply


@pytest.mark.parametrize("path", ROUTES + ["/v1/models"])
def test_bad_keys_get_401(url, path):
    for header in BAD_KEYS:
        reply = _without_key(url, path, header, WELL_FORMED)
        error = assert_openai_4xx(reply, statuses={401})
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key"), error


@pytest.mark.parametrize("path", ROUTES)
def test_bad_keys_with_broken_bodies_are_never_5xx(url, path):
    for header in BAD_KEYS:
        for body in BROKEN_BODIES.values():
            assert_openai_4xx(_without_key(url, path, header, body), statuses={401})


@pytest.mark.parametrize("body", sorted(BROKEN_BODIES))
def test_key_is_checked_before_the_body(url, body):
    assert_openai_4xx(_without_key(url, "/v1/chat/completions", None, BROKEN_BODIES[body]), statuses={401})


def test_stack_still_serves_after_hostile_input(url):
    assert httpx.get(f"{url}/healthz", timeout=TIMEOUT).status_code == 200
    reply = post(url, "/v1/chat/completions", json_body=chat_body("caption en", image=GOOD_IMAGE, max_tokens=2), what="good")
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1
