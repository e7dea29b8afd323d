"""The engine replica: vLLM's async engine in-process, the same code on CPU and GPU."""

from __future__ import annotations

import logging
import os

from ray import serve

from paliserve.spec import DeploymentPlan
from serve.errors import InvalidRequest
from serve.protocol import EngineChunk, EngineRequest

logger = logging.getLogger("paliserve.engine")


def image_token_count(hf_config) -> int:
    vision = hf_config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


class EngineReplica:
    """Runs one `AsyncLLM`; `generate` streams chunks, `complete` returns one final chunk."""

    def __init__(self, deployment: dict):
        self.plan = DeploymentPlan.model_validate(deployment)
        os.environ.update(self.plan.env)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        args = self.plan.engine_args
        self.max_model_len = args.max_model_len
        logger.info("starting vLLM engine for %s with %s", self.plan.name, args.vllm_kwargs())
        self.engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**args.vllm_kwargs(), disable_log_stats=False),
            stat_loggers=[RayPrometheusStatLogger],
        )
        self.tokenizer = self.engine.get_tokenizer()
        self.image_tokens = image_token_count(self.engine.model_config.hf_config)

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens vLLM's PaliGemma processor makes of a prompt: image tokens, <bos>, text, "\n"."""
        return self.image_tokens + 1 + len(self.tokenizer.encode(prompt + "\n", add_special_tokens=False))

    def _check_length(self, request: EngineRequest) -> None:
        prompt_tokens = self.prompt_tokens(request.prompt)
        if prompt_tokens >= self.max_model_len:
            raise InvalidRequest(
                f"The prompt is {prompt_tokens} tokens ({self.image_tokens} of them for the image); "
                f"the model's context is {self.max_model_len} tokens. Shorten the text.",
                param="messages",
                code="context_length_exceeded",
            )
        if request.max_tokens is not None and prompt_tokens + request.max_tokens > self.max_model_len:
            raise InvalidRequest(
                f"The prompt is {prompt_tokens} tokens and max_tokens is {request.max_tokens}; together "
                f"they exceed the model's context of {self.max_model_len} tokens. Lower max_tokens to at "
                f"most {self.max_model_len - prompt_tokens}.",
                param="max_tokens",
                code="context_length_exceeded",
            )

    async def check_health(self) -> None:
        """Serve calls this periodically; an exception marks the replica unhealthy."""
        if self.engine.errored:
            raise RuntimeError(f"vLLM engine is dead: {self.engine.dead_error}")
        await self.engine.check_health()

    async def in_flight(self) -> int:
        """Requests the engine still holds (running or waiting), as vLLM counts them."""
        return self.engine.output_processor.get_num_unfinished_requests()

    async def generate(self, request: EngineRequest):
        """Stream EngineChunks; a cancelled caller aborts the engine request (vLLM does so)."""
        from vllm.sampling_params import RequestOutputKind

        async for chunk in self._run(request, RequestOutputKind.DELTA):
            yield chunk

    async def complete(self, request: EngineRequest) -> EngineChunk:
        from vllm.sampling_params import RequestOutputKind

        final = None
        async for final in self._run(request, RequestOutputKind.FINAL_ONLY):
            pass
        return final

    async def _run(self, request: EngineRequest, output_kind):
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError

        self._check_length(request)
        params = SamplingParams(**request.sampling_kwargs(), output_kind=output_kind)
        prompt = {"prompt": request.prompt, "multi_modal_data": {"image": request.image}}
        completion_tokens = 0
        try:
            async for output in self.engine.generate(prompt, params, request.request_id):
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                yield EngineChunk(
                    text=completion.text,
                    prompt_tokens=len(output.prompt_token_ids or ()),
                    completion_tokens=completion_tokens,
                    finish_reason=completion.finish_reason if output.finished else None,
                    token_ids=list(completion.token_ids),
                )
        except VLLMClientError as exc:  # vLLM's own verdict that the request is invalid
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None), code="invalid_request") from None

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def engine_deployment(plan: DeploymentPlan):
    """The Serve deployment for one planned engine: resources, replicas and autoscaling are the
    plan's (the same entry `Plan.serve_config()` writes for `serve deploy`)."""
    return serve.deployment(EngineReplica).options(
        **plan.serve_deployment(),
        health_check_period_s=10,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=30,
    )
