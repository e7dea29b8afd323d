"""Request and response bodies: the OpenAI chat-completions subset and PaliGemma task routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

INT64 = 2**63


def _encodable(value: str) -> str:
    """JSON allows lone UTF-16 surrogates (`"\\ud800"`); no tokenizer does."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (a lone surrogate such as \\ud800 is not)") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]
StopString = Annotated[Text, Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- OpenAI chat completions -------------------------------------------------------------


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[ContentPart] | None = None


class _Strict(BaseModel):
    """A body whose every field changes the answer: an unknown one is refused (400 naming it,
    `unsupported_parameter`), never dropped, so a client's option is honoured or refused."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = Field(default=False, description="A last chunk with `usage` and no choices.")
    continuous_usage_stats: bool = Field(
        default=False, description="vLLM's extension: cumulative `usage` in every chunk."
    )


class ChatCompletionRequest(_Strict):
    model: Text | None = Field(default=None, description="Served model name; optional when one is served.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = Field(default=None, description="Only with `stream: true`.")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopString | list[StopString] | None = Field(default=None, max_length=16)
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    n: int = Field(default=1, ge=1, le=1, description="PaliGemma serving returns one choice.")
    user: str | None = None
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    # vLLM's extensions to the OpenAI body, honoured as vLLM's server does
    top_k: int | None = Field(default=None, ge=-1, lt=2**31, description="vLLM: -1, 0 or unset considers every token.")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0, description="vLLM extension.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0, description="vLLM extension.")
    ignore_eos: bool = Field(default=False, description="vLLM: keep generating past end-of-sequence.")
    min_tokens: int = Field(default=0, ge=0, description="vLLM: no stop (EOS or `stop`) before this many tokens.")
    logprobs: Literal[False] | None = Field(default=None, description="Not served: only false.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "paliserve"
    # vLLM's fields (`vllm bench serve` reads `root`): an adapter's parent is its base model
    root: str
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- PaliGemma task routes ----------------------------------------------------------------


class _TaskRequest(_Body):
    model: Text | None = None
    image: str = Field(description="The image as a base64 data URL (data:image/png;base64,...) or bare base64.")
    max_tokens: int | None = Field(default=None, ge=1)
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}([-_][A-Za-z]{2,4})?$")


class CaptionRequest(_TaskRequest):
    pass


class OCRRequest(_TaskRequest):
    pass


class AnswerRequest(_TaskRequest):
    question: Text = Field(min_length=1, max_length=2000)


class DetectRequest(_TaskRequest):
    objects: list[Annotated[Text, Field(min_length=1, max_length=200, pattern=r"^[^;<>]+$")]] = Field(
        min_length=1, max_length=32, description="Things to find, e.g. ['cat', 'dog']."
    )


class TextResult(BaseModel):
    model: str
    prompt: str
    text: str
    finish_reason: Literal["stop", "length"] | None
    usage: Usage


class DetectedObject(BaseModel):
    label: str
    box: tuple[float, float, float, float] = Field(
        description="[x0, y0, x1, y1] in pixels of the original image."
    )


class DetectResult(TextResult):
    objects: list[DetectedObject]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's format."""

    error: ErrorDetail
