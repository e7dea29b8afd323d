"""Measure a vLLM engine on the hardware at hand and build a `Profile` for the planner.

Runs vLLM's AsyncLLM in-process (no serve runtime): prefill points are the time to the first token
of one request (image + n prompt tokens) at batch 1; decode points are the mean gap between tokens
when b requests generate together, counted once all b have their first token. Medians over `repeats`.

Run as `paliserve profile ...` or `python -m autoscale.profiler ...` (the engine spawns processes,
so start it from a `__main__` guard).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from paliserve.cpu_engine import cpu_engine_env

from .profile import DecodePoint, PrefillPoint, Profile

CPU_DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
FILLER_WORD = "the cat "


@dataclass(frozen=True)
class ProfileSettings:
    checkpoint: str
    model: str
    accelerator: str = "cpu"
    prompt_tokens: tuple[int, ...] = (4, 32, 128, 512)
    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    decode_tokens: int = 32
    repeats: int = 3
    dtype: str | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1

    @property
    def on_cpu(self) -> bool:
        return self.accelerator.lower() == "cpu"


def measure_profile(settings: ProfileSettings) -> Profile:
    if settings.on_cpu:
        for key, value in CPU_DEFAULT_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.update(cpu_engine_env(os.environ))  # as a replica runs the engine
    return asyncio.run(_measure(settings))


def _engine_args(settings: ProfileSettings):
    from vllm import AsyncEngineArgs

    return AsyncEngineArgs(
        model=settings.checkpoint,
        dtype=settings.dtype or ("float32" if settings.on_cpu else "auto"),
        enforce_eager=settings.on_cpu,
        gpu_memory_utilization=settings.gpu_memory_utilization or (0.3 if settings.on_cpu else 0.9),
        max_num_seqs=max(settings.batches),
        tensor_parallel_size=settings.tensor_parallel_size,
        seed=0,
    )


def _image(size: int, seed: int):
    """Noise, different per seed: vLLM caches prefixes by image, so a repeated image would leave
    only the text to prefill (3B-224 on this CPU: 0.65 s measured against 3.3 s)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8"))


def _prompt_of(tokenizer, tokens: int) -> str:
    """A text prompt of at least `tokens` tokens (the tokenizer decides the exact split)."""
    text = "caption en"
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += " " + FILLER_WORD.strip()
    return text


def decode_step_seconds(runs: list[list[float]]) -> float:
    """The decode step of a batch started together, from each request's token arrival times: the
    median over its requests of the mean gap between tokens once every request has its first one.
    Before that a request's gaps hold the other requests' prefills (a request whose prefill ends
    first decodes while the next one prefills), which is prefill time, not a decode step."""
    settled = max(stamps[0] for stamps in runs if stamps)
    gaps = []
    for stamps in runs:
        after = [t for t in stamps if t >= settled]
        if len(after) > 1:
            gaps.append((after[-1] - after[0]) / (len(after) - 1))
    if not gaps:
        raise ValueError("no request of the batch generated two tokens after the batch's last first token")
    return statistics.median(gaps)


async def _measure(settings: ProfileSettings) -> Profile:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(_engine_args(settings))
    try:
        tokenizer = engine.get_tokenizer()
        config = engine.model_config.hf_config
        vision = config.vision_config
        images = itertools.count()
        image_tokens = (vision.image_size // vision.patch_size) ** 2

        async def run(prompt: str, max_tokens: int) -> list[float]:
            """Arrival time of each streamed output."""
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            stamps = []
            request = {"prompt": prompt, "multi_modal_data": {"image": _image(vision.image_size, next(images))}}
            async for _ in engine.generate(request, params, request_id=uuid.uuid4().hex):
                stamps.append(time.perf_counter())
            return stamps

        await run("caption en", 2)  # warm-up

        prefill = []
        for tokens in settings.prompt_tokens:
            prompt = _prompt_of(tokenizer, tokens)
            actual = len(tokenizer.encode(prompt, add_special_tokens=False))
            samples = []
            for _ in range(settings.repeats):
                start = time.perf_counter()
                stamps = await run(prompt, 1)
                samples.append(stamps[0] - start)
            prefill.append(PrefillPoint(text_tokens=actual, seconds=statistics.median(samples)))

        decode = []
        short = _prompt_of(tokenizer, 4)
        for batch in settings.batches:
            samples = []
            for _ in range(settings.repeats):
                runs = await asyncio.gather(*(run(short, settings.decode_tokens) for _ in range(batch)))
                samples.append(decode_step_seconds(runs))
            decode.append(DecodePoint(batch=batch, step_seconds=statistics.median(samples)))
    finally:
        engine.shutdown()

    return Profile(
        model=settings.model,
        checkpoint=settings.checkpoint,
        accelerator=settings.accelerator,
        dtype=str(_engine_args(settings).dtype),
        tensor_parallel_size=settings.tensor_parallel_size,
        image_tokens=image_tokens,
        context_tokens=image_tokens + 6 + settings.decode_tokens // 2,
        prefill=prefill,
        decode=decode,
        measured_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        notes=f"medians of {settings.repeats}; host {os.uname().nodename}",
    )


def main() -> None:
    import typer

    from .cli import profile_command

    typer.run(profile_command)


if __name__ == "__main__":
    main()
