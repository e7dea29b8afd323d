"""How many prompt tokens a word of the load test's prompts costs on the live model.

Two non-streamed requests (1 word and 1 + WORDS words, one output token) and the difference of
their usage.prompt_tokens: the server's own tokenizer, whatever the model.
"""

from __future__ import annotations

from .images import png_data_url
from .traffic import WORDS

EXTRA_WORDS = 20


def tokens_per_word(host: str, model: str, key: str | None, image_size: int, timeout_s: float = 30.0) -> float:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    image = png_data_url(image_size, seed=0)

    def prompt_tokens(words: int) -> int:
        body = {
            "model": model,
            "max_tokens": 1,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": " ".join(WORDS[i % len(WORDS)] for i in range(words))},
                {"type": "image_url", "image_url": {"url": image}},
            ]}],
        }  # fmt: skip
        response = httpx.post(f"{host.rstrip('/')}/v1/chat/completions", json=body, headers=headers, timeout=timeout_s)
        response.raise_for_status()
        return response.json()["usage"]["prompt_tokens"]

    return max((prompt_tokens(1 + EXTRA_WORDS) - prompt_tokens(1)) / EXTRA_WORDS, 0.1)
