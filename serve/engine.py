"""The engine replica: vLLM's async engine in-process, the same code on CPU and GPU."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os

from ray import serve

from paliserve.cpu_engine import cpu_engine_env
from paliserve.spec import DeploymentPlan
from serve.errors import EngineUnavailable, InvalidRequest, retry_after
from serve.protocol import EngineChunk, EngineRequest
from serve.replica_logging import serve_log_kept
from serve.tenancy.access import Target
from serve.tenancy.isolation import image_uuid
from serve.tenancy.metrics import EngineUsageMetrics
from serve.tenancy.showback import EngineClock

logger = logging.getLogger("paliserve.engine")
# Serve's health checks of a replica holding an engine (its own, or a colocated gateway)
# (every 2 s: a check is a flag read in vLLM's client, and Serve replaces a replica after 3 failed
# checks in a row, so a replica whose engine process died is replaced ~6 s later, not ~30 s; HAProxy
# stops sending to it after the first failed check, serve/ingress.py)
ENGINE_HEALTH_CHECK = {"health_check_period_s": 2, "health_check_timeout_s": 30}
ENGINE_DEAD_RETRY_S = 3  # Retry-After when the engine died: the replica leaves HAProxy's pool by then


def engine_dead() -> EngineUnavailable:
    """What every request to a replica whose vLLM engine process died gets: a 503 to retry."""
    return EngineUnavailable(
        "This replica's engine process stopped; the replica is being replaced. Retry shortly.",
        code="engine_unavailable",
        headers=retry_after(ENGINE_DEAD_RETRY_S),
    )
INLINE_HASH_PIXELS = 1 << 20  # a salted request's image is hashed on a thread above this size


def image_token_count(hf_config) -> int:
    vision = hf_config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


class LoadedAdapter:
    """A LoRA adapter registered with the engine; Serve's multiplexer calls `__del__` (on a
    worker thread) when the adapter leaves the replica's LRU set, which unloads it from vLLM."""

    def __init__(self, lora_request, engine, loop: asyncio.AbstractEventLoop):
        self.lora_request = lora_request
        self._engine = engine
        self._loop = loop
        self._removed = False

    def __del__(self):
        if self._removed:
            return
        self._removed = True
        try:
            asyncio.run_coroutine_threadsafe(self._engine.remove_lora(self.lora_request.lora_int_id), self._loop)
        except RuntimeError:  # the loop is gone: the engine is shutting down with it
            pass


class EngineReplica:
    """Runs one `AsyncLLM`; `generate` streams chunks, `complete` returns one final chunk.

    LoRA adapters of the plan are served through Serve model multiplexing: the multiplexed model
    id is the adapter's name, each replica keeps at most `max_cpu_loras` (else `max_loras`)
    adapters loaded (least recently used leaves first), and Serve routes a request to a replica
    that already holds its adapter when one does.
    """

    def __init__(self, deployment: dict):
        self.plan = DeploymentPlan.model_validate(deployment)
        os.environ.update(self.plan.env)
        if self.plan.device == "cpu":  # before vLLM reads them: the engine runs in one process (paliserve/cpu_engine.py)
            os.environ.update(cpu_engine_env(self.plan.env))
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from serve.batched_metrics import batched_stat_logger

        args = self.plan.engine_args
        self.max_model_len = args.max_model_len
        logger.info("starting vLLM engine for %s with %s", self.plan.name, args.vllm_kwargs())
        with serve_log_kept():  # vLLM's logging set-up closes Serve's replica log (serve/replica_logging.py)
            self.engine = AsyncLLM.from_engine_args(
                AsyncEngineArgs(**args.vllm_kwargs(), disable_log_stats=False),
                stat_loggers=[batched_stat_logger()],
            )
        self.tokenizer = self.engine.get_tokenizer()
        # Task prompts repeat ("caption en", "detect cat"): count each text's tokens once
        self._text_tokens = functools.lru_cache(maxsize=4096)(
            lambda text: len(self.tokenizer.encode(text, add_special_tokens=False)))
        self.image_tokens = image_token_count(self.engine.model_config.hf_config)
        self.adapters = {a.name: a for a in self.plan.adapters}
        self._lora_ids = itertools.count(1)
        self._loaded: dict[int, str] = {}
        per_replica = args.max_cpu_loras or args.max_loras

        async def load_adapter(name: str) -> LoadedAdapter:  # a function: Serve keeps its LRU state on it
            return await self._register_adapter(name)

        self._load_adapter = serve.multiplexed(max_num_models_per_replica=per_replica)(load_adapter)
        self.clock = EngineClock(EngineUsageMetrics().record)  # busy time apportioned to tenants by tokens

    async def _register_adapter(self, name: str) -> LoadedAdapter:
        from vllm.lora.request import LoRARequest

        adapter = self.adapters.get(name)
        if adapter is None or not self.plan.engine_args.enable_lora:
            raise InvalidRequest(f"No adapter '{name}' on model '{self.plan.model_name}'.", param="model", code="model_not_found")
        request = LoRARequest(lora_name=name, lora_int_id=next(self._lora_ids), lora_path=adapter.path)
        await self.engine.add_lora(request)
        self._loaded[request.lora_int_id] = name
        logger.info("loaded adapter %s from %s", name, adapter.path)
        return LoadedAdapter(request, self.engine, asyncio.get_running_loop())

    async def loaded_adapters(self) -> list[str]:
        """Adapters the engine holds now (as vLLM reports them)."""
        return sorted(self._loaded[i] for i in await self.engine.list_loras() if i in self._loaded)

    async def _lora_request(self, name: str | None):
        return (await self._load_adapter(name)).lora_request if name else None

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens vLLM's PaliGemma processor makes of a prompt: image tokens, <bos>, text, "\n"."""
        return self.image_tokens + 1 + self._text_tokens(prompt + "\n")

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

        if self.engine.errored:  # the EngineCore process is gone: refused at once
            raise engine_dead()
        self._check_length(request)
        lora_request = await self._lora_request(request.adapter)
        params = SamplingParams(**request.sampling_kwargs(), output_kind=output_kind)
        prompt = {"prompt": request.prompt, "multi_modal_data": {"image": request.image}}
        if request.cache_salt:  # the tenant's own prefix and multimodal cache entries (serve/tenancy/isolation.py)
            prompt["cache_salt"] = request.cache_salt
            prompt["multi_modal_uuids"] = {"image": [await self._image_uuid(request)]}
        prompt_tokens = completion_tokens = 0
        self.clock.start()
        try:
            async for output in self.engine.generate(prompt, params, request.request_id, lora_request=lora_request):
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                prompt_tokens = len(output.prompt_token_ids or ())
                yield EngineChunk(
                    text=completion.text,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    finish_reason=completion.finish_reason if output.finished else None,
                    token_ids=list(completion.token_ids),
                    image_tokens=self.image_tokens if prompt_tokens else 0,
                )
        except VLLMClientError as exc:  # vLLM's own verdict that the request is invalid
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None), code="invalid_request") from None
        except Exception:
            if self.engine.errored:  # EngineDeadError, or whatever else the dying engine's client raised
                raise engine_dead() from None
            raise
        finally:  # also when the caller went away: the tokens computed so far were engine time
            target = Target(self.plan.model_name, request.adapter).name
            self.clock.finish((request.tenant, target), prompt_tokens + completion_tokens)

    async def _image_uuid(self, request: EngineRequest) -> str:
        image = request.image
        if image.width * image.height > INLINE_HASH_PIXELS:  # large images: off the event loop
            return await asyncio.to_thread(image_uuid, request.cache_salt, image)
        return image_uuid(request.cache_salt, image)

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def engine_deployment(plan: DeploymentPlan, drain_s: float):
    """The Serve deployment for one planned engine: resources, replicas and autoscaling are the
    plan's (the same entry `Plan.serve_config()` writes for `serve deploy`). A stopping replica
    (scale-down, redeploy) finishes its requests for up to `drain_s` before it is killed."""
    return serve.deployment(EngineReplica).options(
        **plan.serve_deployment(), **ENGINE_HEALTH_CHECK, graceful_shutdown_timeout_s=drain_s
    )
