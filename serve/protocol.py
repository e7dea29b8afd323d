"""What the gateway sends an engine replica and what comes back (picklable across Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class EngineRequest:
    request_id: str
    prompt: str
    image: Image.Image
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    adapter: str | None = None  # a LoRA adapter of the model (Serve also routes by it as the multiplexed id)
    # Set by the gateway from the authenticated tenant, never from the client: the tenant (usage
    # metrics) and the salt that keys its prefix and multimodal caches apart from other tenants'.
    tenant: str | None = None
    cache_salt: str | None = None
    # the rest of vLLM's sampling parameters a chat request may set (their vLLM defaults)
    top_k: int | None = None
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_tokens: int = 0

    def sampling_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop or None,
            "seed": self.seed,
        }
        for name in ("min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "ignore_eos", "min_tokens"):
            if getattr(self, name) != EngineRequest.__dataclass_fields__[name].default:
                kwargs[name] = getattr(self, name)
        if self.top_k is not None:
            kwargs["top_k"] = self.top_k
        return kwargs


@dataclass
class EngineChunk:
    """New text and token ids since the previous chunk; token counts are cumulative."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    image_tokens: int = 0  # of prompt_tokens, the image's (0 until the prompt is processed)
