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

    def sampling_kwargs(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop or None,
            "seed": self.seed,
        }


@dataclass
class EngineChunk:
    """New text and token ids since the previous chunk; token counts are cumulative."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
