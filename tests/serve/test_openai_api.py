"""The OpenAI-compatible API through the official `openai` client against the real stack."""

import pytest
from serve_helpers import AUTH, data_url, png_bytes

pytestmark = pytest.mark.engine

IMAGE = data_url(png_bytes())


def messages(text="caption en", image=IMAGE):
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image}}]}]


def test_up_printed_url_and_a_curl_example(stack):
    assert stack["url"] in stack["up_stdout"]
    assert "curl -s" in stack["up_stdout"] and "data:image/png;base64," in stack["up_stdout"]
    assert 'Authorization: Bearer $PALISERVE_KEY' in stack["up_stdout"]  # the stack's plan has tenants


def test_models_lists_the_served_model(openai_client):
    assert [m.id for m in openai_client.models.list().data] == ["tiny-paligemma"]


def test_chat_completion_with_image(openai_client):
    reply = openai_client.chat.completions.create(model="tiny-paligemma", messages=messages(), max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("length", "stop")
    # 4 image tokens + <bos> + "caption en" (10 one-character tokens here) + "\n"
    assert reply.usage.prompt_tokens == 16
    assert reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_equals_non_streaming_and_ends_with_usage(openai_client):
    kwargs = dict(model="tiny-paligemma", messages=messages(), max_tokens=12, temperature=0)
    whole = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(openai_client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12


def test_greedy_is_deterministic_and_seed_repeats_sampling(openai_client):
    greedy = [
        openai_client.chat.completions.create(model="tiny-paligemma", messages=messages(), max_tokens=10, temperature=0)
        .choices[0].message.content
        for _ in range(2)
    ]
    assert greedy[0] == greedy[1]
    sampled = {
        seed: openai_client.chat.completions.create(
            model="tiny-paligemma", messages=messages(), max_tokens=10, temperature=1.0, seed=seed
        ).choices[0].message.content
        for seed in (1, 1, 2)
    }
    again = openai_client.chat.completions.create(
        model="tiny-paligemma", messages=messages(), max_tokens=10, temperature=1.0, seed=1
    ).choices[0].message.content
    assert again == sampled[1]
    assert sampled[1] != sampled[2]


def test_max_tokens_and_stop(openai_client):
    first = openai_client.chat.completions.create(model="tiny-paligemma", messages=messages(), max_tokens=3, temperature=0)
    assert first.usage.completion_tokens == 3 and first.choices[0].finish_reason == "length"
    full = openai_client.chat.completions.create(model="tiny-paligemma", messages=messages(), max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    stop = text[len(text) // 2 :][:3]
    cut = openai_client.chat.completions.create(
        model="tiny-paligemma", messages=messages(), max_tokens=20, temperature=0, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_model_may_be_omitted_when_one_is_served(url):
    import httpx

    body = {"messages": messages(), "max_tokens": 2}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert reply.status_code == 200 and reply.json()["model"] == "tiny-paligemma"


def test_openapi_document_lists_every_route(url):
    import httpx

    paths = httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    for path in ["/v1/chat/completions", "/v1/models", "/healthz", "/v1/vision/caption", "/v1/vision/ocr",
                 "/v1/vision/answer", "/v1/vision/detect"]:  # fmt: skip
        assert path in paths


def test_healthz_reports_each_engine(url):
    import httpx

    body = httpx.get(f"{url}/healthz", timeout=30).json()
    assert body == {"status": "ok", "models": {"tiny-paligemma": "ok"}}
