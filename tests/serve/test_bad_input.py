"""Every kind of bad input gets a 4xx in the OpenAI error format naming the problem."""

import base64

import httpx
import openai
import pytest
from serve_helpers import AUTH, chat_body, data_url, png_bytes
from test_images import _png_header_only

pytestmark = pytest.mark.engine

GOOD_IMAGE = data_url(png_bytes())


def check_error(reply: httpx.Response, status: int, param=..., code=...) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not ...:
        assert error["param"] == param, error
    if code is not ...:
        assert error["code"] == code, error
    return error


def chat(url, body=None, content=None, headers=None):
    kwargs = {"json": body} if content is None else {"content": content}
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, headers={**AUTH, **(headers or {})}, **kwargs)


def test_malformed_json(url):
    error = check_error(chat(url, content=b'{"messages": [', headers={"Content-Type": "application/json"}), 400, None)
    assert "JSON" in error["message"]


def test_body_not_an_object(url):
    check_error(chat(url, content=b"[1, 2]", headers={"Content-Type": "application/json"}), 400)


def test_missing_messages(url):
    check_error(chat(url, {"model": "tiny-paligemma"}), 400, "messages")


def test_no_image(url):
    check_error(chat(url, chat_body()), 400, "messages", "image_required")


def test_two_images(url):
    body = chat_body(image=GOOD_IMAGE)
    body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": GOOD_IMAGE}})
    check_error(chat(url, body), 400, "messages", "too_many_images")


@pytest.mark.parametrize(
    "image,code",
    [
        ("data:image/png;base64,!!!!", "invalid_base64"),
        (data_url(b"\x89PNG\r\n\x1a\n garbage"), "invalid_image"),
        (data_url(png_bytes((64, 64))[:60]), "invalid_image"),
        (data_url(png_bytes((64, 64), fmt="JPEG")[:200], "image/jpeg"), "invalid_image"),
        (data_url(_png_header_only(20_000, 20_000)), "image_too_large"),
        ("https://example.com/cat.png", "remote_image_url_disabled"),
        ("http://127.0.0.1:1/cat.png", "remote_image_url_disabled"),
    ],
    ids=["bad-base64", "undecodable", "truncated-png", "truncated-jpeg", "pixel-bomb", "remote-https", "remote-http"],
)
def test_bad_images(url, image, code):
    check_error(chat(url, chat_body(image=image)), 400, "messages.content.image_url", code)


def test_image_over_byte_cap(url):
    huge = base64.b64encode(b"\x00" * (11 * 1024 * 1024)).decode()
    check_error(chat(url, chat_body(image=f"data:image/png;base64,{huge}")), 400, "messages.content.image_url", "image_too_large")


def test_prompt_longer_than_context(url):
    check_error(chat(url, chat_body("x" * 3000, image=GOOD_IMAGE)), 400, "messages", "context_length_exceeded")


def test_prompt_plus_max_tokens_over_context(url):
    check_error(chat(url, chat_body("x" * 1500, image=GOOD_IMAGE, max_tokens=1000)), 400, "max_tokens", "context_length_exceeded")


@pytest.mark.parametrize("max_tokens", [0, -1, 10**6, "ten"])
def test_max_tokens_out_of_range(url, max_tokens):
    check_error(chat(url, chat_body(image=GOOD_IMAGE, max_tokens=max_tokens)), 400, "max_tokens")


@pytest.mark.parametrize("field,value", [("temperature", -0.5), ("temperature", 9), ("top_p", 0), ("n", 2)])
def test_sampling_parameters_out_of_range(url, field, value):
    check_error(chat(url, chat_body(image=GOOD_IMAGE, **{field: value})), 400, field)


def test_unknown_model(url):
    body = {**chat_body(image=GOOD_IMAGE), "model": "no-such-model"}
    error = check_error(chat(url, body), 404, "model", "model_not_found")
    assert "tiny-paligemma" in error["message"]


def test_task_route_errors_name_the_field(url):
    r = httpx.post(f"{url}/v1/vision/caption", json={"max_tokens": 4}, headers=AUTH, timeout=60)
    check_error(r, 400, "image")
    r = httpx.post(f"{url}/v1/vision/detect", json={"image": GOOD_IMAGE, "objects": ["a;b"]}, headers=AUTH, timeout=60)
    check_error(r, 400, "objects.0")
    r = httpx.post(f"{url}/v1/vision/answer", json={"image": "data:image/png;base64,AAAA"}, headers=AUTH, timeout=60)
    check_error(r, 400, "question")


def test_unknown_route_is_404_in_the_same_format(url):
    check_error(httpx.get(f"{url}/v1/nope", headers=AUTH, timeout=30), 404)


def test_openai_client_sees_typed_errors(openai_client):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model="tiny-paligemma", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "image_required"
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_stack_is_still_healthy_after_bad_input(url, openai_client):
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    reply = openai_client.chat.completions.create(
        model="tiny-paligemma",
        messages=[{"role": "user", "content": [{"type": "text", "text": "ocr"}, {"type": "image_url", "image_url": {"url": GOOD_IMAGE}}]}],
        max_tokens=2,
    )
    assert reply.usage.completion_tokens >= 1
