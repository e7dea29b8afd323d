"""vLLM's client surface: what tools written for vLLM's OpenAI server call, against the real stack.

- `GET /health` (what guidellm, and load balancers configured for vLLM, TGI or SGLang, probe) and
  `GET /version`, public like `/healthz`;
- `/v1/models` cards carry vLLM's `root` (read by `vllm bench serve`) and `max_model_len`;
- every chat option such clients send is honoured or refused with a 400 naming it, never
  dropped: `stream_options.include_usage` / `continuous_usage_stats`, `n`, `max_completion_tokens`,
  `ignore_eos`, `min_tokens` (sent by guidellm and `vllm bench serve`), unknown fields;
- guidellm 0.8.1, unchanged (its CLI in a subprocess), for a few seconds: 0 errored requests;
- `vllm bench serve --backend openai-chat` with its multimodal random dataset: 0 failed requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import LOCAL_KEY
from serve_helpers import AUTH, chat_body, data_url, png_bytes

from paliserve import __version__

pytestmark = pytest.mark.engine

IMAGE = data_url(png_bytes(color=(30, 160, 90)))
TIMEOUT = 60


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=TIMEOUT)


def events(url: str, body: dict) -> list[dict]:
    """The SSE events of a streamed chat completion, up to `[DONE]` (which must end it)."""
    reply = post(url, {**body, "stream": True})
    assert reply.status_code == 200, reply.text
    data = [line.removeprefix("data: ") for line in reply.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", data[-3:]
    return [json.loads(d) for d in data[:-1]]


def refused(reply: httpx.Response, param: str, code: str) -> str:
    assert reply.status_code == 400, (reply.status_code, reply.text)
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert param.rsplit(".", 1)[-1] in error["message"], error
    return error["message"]


# ---- routes ------------------------------------------------------------------------------


def test_health_is_public_and_answers_as_healthz(url):
    health = httpx.get(f"{url}/health", timeout=TIMEOUT)  # no key, as guidellm's probe sends none here
    assert health.status_code == 200, health.text
    assert health.json() == httpx.get(f"{url}/healthz", timeout=TIMEOUT).json() == {
        "status": "ok", "models": {"tiny-paligemma": "ok"}}  # fmt: skip


def test_version_is_public_in_vllms_shape(url):
    reply = httpx.get(f"{url}/version", timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["version"] == __version__ and body["engine"].startswith("vllm 0.")


def test_openapi_document_lists_the_compatibility_routes(url):
    paths = httpx.get(f"{url}/openapi.json", timeout=TIMEOUT).json()["paths"]
    assert {"/health", "/version"} <= set(paths)
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["$ref"].endswith("/ChatCompletionRequest")


def test_model_cards_carry_vllms_fields(url):
    cards = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=TIMEOUT).json()["data"]
    assert cards[0]["id"] == cards[0]["root"] == "tiny-paligemma"
    assert cards[0]["max_model_len"] == 2048 and cards[0]["parent"] is None


# ---- options: refused, naming the field ----------------------------------------------------


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"5": 1}}, "logit_bias"),
        ({"best_of": 2}, "best_of"),
        ({"stream": True, "stream_options": {"include_usage": True, "chunk_size": 4}}, "stream_options.chunk_size"),
    ],
)
def test_unknown_options_are_refused_by_name(url, extra, param):
    message = refused(post(url, chat_body(image=IMAGE, max_tokens=2, **extra)), param, "unsupported_parameter")
    assert "not support" in message


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream: true
        ({"max_completion_tokens": 4, "min_tokens": 5}, "min_tokens"),
        ({"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"ignore_eos": "sometimes"}, "ignore_eos"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_unservable_values_are_refused_by_name(url, extra, param):
    refused(post(url, chat_body(image=IMAGE, **{"max_tokens": 2, **extra})), param, "invalid_value")


# ---- options: honoured ---------------------------------------------------------------------


def test_include_usage_adds_one_last_usage_chunk(url):
    chunks = events(url, chat_body(image=IMAGE, max_tokens=6, temperature=0, stream_options={"include_usage": True}))
    assert [c.get("usage") is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 6


def test_continuous_usage_stats_puts_cumulative_usage_in_every_chunk(url):
    options = {"include_usage": True, "continuous_usage_stats": True}  # as guidellm sends them
    chunks = events(url, chat_body(image=IMAGE, max_completion_tokens=8, temperature=0, stream_options=options))
    usages = [c["usage"] for c in chunks]
    assert all(u is not None for u in usages), chunks
    assert usages[0]["completion_tokens"] == 0 and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    completion = [u["completion_tokens"] for u in usages]
    assert completion == sorted(completion) and completion[-1] == usages[-2]["completion_tokens"]
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in usages)
    assert {u["prompt_tokens"] for u in usages} == {16}
    # without include_usage, vLLM's extension alone: usage in every chunk, no trailing usage chunk
    alone = events(url, chat_body(image=IMAGE, max_tokens=4, temperature=0, stream_options={"continuous_usage_stats": True}))
    assert all(c["usage"] is not None for c in alone) and all(c["choices"] for c in alone)


def test_max_completion_tokens_with_ignore_eos_generates_exactly_that_many(openai_client):
    reply = openai_client.chat.completions.create(
        model="tiny-paligemma", messages=chat_body(image=IMAGE)["messages"], max_completion_tokens=20, temperature=1.0,
        seed=3, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert reply.usage.completion_tokens == 20 and reply.choices[0].finish_reason == "length"


def _finish_at_eos(url: str, max_tokens: int, seeds: range) -> tuple[int, dict] | None:
    """A seed whose sampled answer ends at the end-of-sequence token before `max_tokens`."""
    for seed in seeds:
        reply = post(url, chat_body(image=IMAGE, max_tokens=max_tokens, temperature=2.0, seed=seed))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        if body["choices"][0]["finish_reason"] == "stop":
            return seed, body
    return None


def test_ignore_eos_generates_past_the_end_of_sequence(url):
    # The tiny model samples its 2,048-token vocabulary nearly uniformly at temperature 2: within a
    # few 400-token answers one ends at <eos>; the same seed with ignore_eos must not.
    found = _finish_at_eos(url, 400, range(40))
    assert found is not None, "no answer ended at <eos> in 40 seeds"
    seed, stopped = found
    again = post(url, chat_body(image=IMAGE, max_tokens=400, temperature=2.0, seed=seed, ignore_eos=True)).json()
    assert stopped["usage"]["completion_tokens"] < 400
    assert again["choices"][0]["finish_reason"] == "length" and again["usage"]["completion_tokens"] == 400


def test_min_tokens_holds_back_a_stop_string(url):
    greedy = post(url, chat_body(image=IMAGE, max_tokens=16, temperature=0)).json()["choices"][0]["message"]["content"]
    stop = greedy.strip()[:1]
    assert stop, greedy
    early = post(url, chat_body(image=IMAGE, max_tokens=16, temperature=0, stop=[stop])).json()
    held = post(url, chat_body(image=IMAGE, max_tokens=16, temperature=0, stop=[stop], min_tokens=10)).json()
    assert early["choices"][0]["finish_reason"] == "stop" and early["usage"]["completion_tokens"] < 10, early
    assert held["usage"]["completion_tokens"] >= 10, held


def test_vllm_sampling_extensions_are_accepted(url):
    body = chat_body(image=IMAGE, max_tokens=4, temperature=0.7, seed=1, top_k=20, min_p=0.05, repetition_penalty=1.2,
                     frequency_penalty=0.5, presence_penalty=0.5, logprobs=False, n=1, user="u")  # fmt: skip
    reply = post(url, body)
    assert reply.status_code == 200, reply.text


# ---- guidellm, unchanged -------------------------------------------------------------------

GUIDELLM_SECONDS = 8
GUIDELLM_MAX_REQUESTS = 40


def test_guidellm_runs_unchanged_against_the_stack(url, tiny_model_dir, tmp_path):
    """guidellm's own CLI: its backend check (`GET /health`), `/v1/models`, then synchronous
    streamed chat completions with synthetic images (PaliGemma needs one) and the options it
    always sends (stream_options with continuous usage, max_completion_tokens, ignore_eos, stop)."""
    guidellm = Path(sys.executable).with_name("guidellm")
    out = tmp_path / "report.json"
    cmd = [
        str(guidellm), "run",
        "--backend", f"kind=openai_http,target={url},api_key=sk-local-dev,request_format=/v1/chat/completions",
        "--profile", "kind=synchronous",
        "--constraint", f"kind=max_duration,seconds={GUIDELLM_SECONDS}",
        "--constraint", f"kind=max_requests,count={GUIDELLM_MAX_REQUESTS}",
        "--data", "kind=synthetic_image,width=32,height=32,format=png,output_tokens=8",
        "--tokenizer", f"kind=huggingface_auto,model={tiny_model_dir}",
        "--output", f"kind=json,path={out}",
        "--disable-console-interactive",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    report = json.loads(out.read_text())
    totals = report["benchmarks"][0]["metrics"]["request_totals"]
    print(f"\n[guidellm] {totals}")
    assert totals["errored"] == 0 and totals["incomplete"] == 0, totals
    assert totals["successful"] > 0, totals


def test_vllm_bench_serve_runs_unchanged_against_the_stack(url, tiny_model_dir):
    """vLLM's own benchmark client (`vllm bench serve --backend openai-chat`, random images: its
    text datasets send no image, which PaliGemma refuses). It sends the key from OPENAI_API_KEY
    with each request but not when it asks `/v1/models` for a model (a keyed vLLM server would
    refuse that too), so the model is named; it sends `ignore_eos` and `stream_options`."""
    cmd = [
        sys.executable, "-m", "paliserve.vllm_cli", "bench", "serve",
        "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions", "--model", "tiny-paligemma",
        "--tokenizer", str(tiny_model_dir), "--dataset-name", "random-mm", "--num-prompts", "16",
        "--random-input-len", "8", "--random-output-len", "8", "--random-mm-base-items-per-request", "1",
        "--random-mm-num-mm-items-range-ratio", "0", "--random-mm-limit-mm-per-prompt", '{"image": 1, "video": 0}',
        "--random-mm-bucket-config", "{(32, 32, 1): 1.0}", "--temperature", "0", "--max-concurrency", "2",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OPENAI_API_KEY": LOCAL_KEY})
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    lines = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in run.stdout.splitlines()) if v}
    print(f"\n[vllm bench] successful {lines.get('Successful requests')}, failed {lines.get('Failed requests')}")
    assert lines.get("Successful requests") == "16" and lines.get("Failed requests") == "0", run.stdout[-2000:]
    assert lines.get("Total generated tokens") == str(16 * 8), run.stdout[-2000:]  # ignore_eos honoured
