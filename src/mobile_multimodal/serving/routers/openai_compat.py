"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``.

Works with the official ``openai`` client: the image goes in an ``image_url`` content part as a
data URI, ``stream: true`` answers with server-sent ``chat.completion.chunk`` events and a final
``data: [DONE]``.

Which task runs is read from the text of the last user message (the one carrying the image):

1. it mentions reading: one of the words *read, text, ocr, written, write, say, says, word,
   words, transcribe* → **ocr**;
2. else it is a question: it ends with ``?`` or starts with *what, which, where, how, is, are,
   does, do, can, who, why, when, count* → **vqa**, the text being the question;
3. else → **captioning** (also when there is no text at all).

Limits: the user turn's text may have at most ``MAX_PROMPT_CHARS`` characters, and a question
(vqa) at most the model's ``max_question_tokens`` tokens; over either is 422 ``PROMPT_TOO_LONG``
(with or without ``stream``), answered before the image is decoded.

Decoding is greedy, so ``temperature`` and ``top_p`` are accepted and have no effect; ``n`` must
be 1. The choice carries ``confidence`` (0..1), an extension field: the model's confidence in the
answer, as ``result.confidence`` of ``POST /inference``. With ``stream: true`` the answer is
generated in one batched pass and then sent as one chunk per word. ``usage`` counts the model's
own tokens: prompt tokens the decoder reads (``<bos> <task> question <sep>``; 0 for OCR, which
has no prompt), completion tokens it wrote (words, or characters for OCR). Image tokens are not
counted.

Example::

    client = openai.OpenAI(base_url="http://localhost:8080/v1", api_key="...")
    client.chat.completions.create(model="mobile-multimodal-llm", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What colour is the circle?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}])
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import Span
from pydantic import BaseModel, ConfigDict, Field

from mobile_multimodal.observability.identity import SERVICE_NAME
from mobile_multimodal.observability.tracing import current_trace_id, leaf_stage
from mobile_multimodal.security import Principal, require_api_key
from mobile_multimodal.serving.deps import get_engine, inference_span
from mobile_multimodal.serving.engine import InferenceEngine
from mobile_multimodal.serving.error_handlers import ErrorCode, ServiceError
from mobile_multimodal.serving.openapi import error_responses
from mobile_multimodal.serving.request_pipeline import InferenceJob, run_job
from mobile_multimodal.serving.schemas import DEFAULT_MAX_TOKENS, MAX_PROMPT_CHARS, MAX_TOKENS_LIMIT

router = APIRouter(prefix="/v1", tags=["openai"])

_OCR_WORDS = re.compile(r"\b(read|text|ocr|written|write|says?|words?|transcribe)\b", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^\s*(what|which|where|how|is|are|does|do|can|who|why|when|count)\b", re.IGNORECASE
)


# --- request ---------------------------------------------------------------------------------
class ImageURL(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    url: str = Field(min_length=1, description="A data URI: data:image/png;base64,...")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Clients send options this model has no use for (logprobs, seed, ...): ignore, don't refuse.
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, description="Only 1 is supported.")
    temperature: float | None = Field(None, ge=0, le=2, description="Accepted; decoding is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Accepted; decoding is greedy.")


# --- response --------------------------------------------------------------------------------
class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


CONFIDENCE = (
    "Extension: the model's confidence in this answer, 0..1, no labels needed (the geometric-mean "
    "probability of its tokens, or of the CTC best path per frame for OCR), as result.confidence "
    "of POST /inference; streamed in the chunk that carries finish_reason. The official clients "
    "keep unknown fields (choice.model_extra['confidence'] in Python)."
)


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None
    confidence: float | None = Field(None, ge=0, le=1, description=CONFIDENCE)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- the task rule ---------------------------------------------------------------------------
def infer_task(text: str) -> str:
    """ocr / vqa / captioning from the user's words (see the module doc)."""
    if _OCR_WORDS.search(text):
        return "ocr"
    stripped = text.strip()
    if stripped.endswith("?") or _QUESTION_START.match(stripped):
        return "vqa"
    return "captioning"


def _last_user_turn(messages: list[ChatMessage]) -> tuple[str, str]:
    """(text, image data URI) of the last user message that carries an image."""
    for message in reversed(messages):
        if message.role != "user" or not isinstance(message.content, list):
            continue
        images = [p.image_url.url for p in message.content if isinstance(p, ImagePart)]
        if not images:
            continue
        if len(images) > 1:
            raise ServiceError(ErrorCode.UNSUPPORTED_PARAMETER, "one image per message is supported")
        text = " ".join(p.text for p in message.content if isinstance(p, TextPart))
        if len(text) > MAX_PROMPT_CHARS:
            raise ServiceError(
                ErrorCode.PROMPT_TOO_LONG,
                f"the message's text is {len(text)} characters; the limit is {MAX_PROMPT_CHARS} "
                "characters (and a question's, the model's limit in tokens)",
            )
        return text, images[0]
    raise ServiceError(
        ErrorCode.MISSING_IMAGE,
        "no image: add a content part {'type': 'image_url', 'image_url': {'url': "
        "'data:image/png;base64,...'}} to a user message",
    )


def _check_request(body: ChatCompletionRequest, engine: InferenceEngine) -> None:
    if body.n not in (None, 1):
        raise ServiceError(ErrorCode.UNSUPPORTED_PARAMETER, "n must be 1")
    served = {engine.describe()["name"], SERVICE_NAME, "default"}
    if body.model not in served:
        raise ServiceError(
            ErrorCode.UNKNOWN_MODEL, f"model '{body.model}' is not served here; use one of {sorted(served)}"
        )


def _usage(engine: InferenceEngine, task: str, question: str | None, answer: str) -> Usage:
    tokenizer = engine.model.tokenizer if engine.model is not None else None
    if tokenizer is None or task == "ocr":
        prompt, completion = 0, len(answer)
    else:
        prompt = len(tokenizer.prompt(task, question))
        completion = len(tokenizer.encode(answer))
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _stream(completion: ChatCompletion, include_usage: bool) -> AsyncIterator[bytes]:
    head = {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
        "system_fingerprint": completion.system_fingerprint,
    }
    choice = completion.choices[0]

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
        return {
            **head,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None, **extra}],
        }

    yield _sse(chunk({"role": "assistant", "content": ""}, None))
    words = choice.message.content.split(" ")
    for i, word in enumerate(words):
        yield _sse(chunk({"content": word if i == 0 else " " + word}, None))
    yield _sse(chunk({}, choice.finish_reason, confidence=choice.confidence))
    if include_usage:
        yield _sse({**head, "choices": [], "usage": completion.usage.model_dump()})
    yield _sse("[DONE]")


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "A chat.completion, or with stream=true server-sent chat.completion.chunk events",
        },
        **error_responses(400, 401, 403, 404, 413, 415, 422, 429, 500, 503, 504),
    },
    summary="OpenAI-compatible chat completion over one image",
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    span: Span = Depends(inference_span),
    principal: Principal = Depends(require_api_key),
) -> Any:
    engine = get_engine(request)
    _check_request(body, engine)
    text, image_uri = _last_user_turn(body.messages)
    task = infer_task(text)
    question = text.strip() if task == "vqa" else None
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS.get(task, 0)
    job = InferenceJob(task=task, max_tokens=max_tokens, image=image_uri, question=question)
    with trace.use_span(span, end_on_exit=False):
        outcome = await run_job(engine, job, span, user_type=principal.user_type)
        with leaf_stage("postprocessing"):
            answer = str(next(iter(outcome.result.values())))
            usage = _usage(engine, task, question, answer)
            span.set_attribute("output.size", len(answer))
            ref = engine.describe()
            finish = "length" if task != "ocr" and usage.completion_tokens >= max_tokens else "stop"
            confidence = outcome.result.get("confidence")
            completion = ChatCompletion(
                id=f"chatcmpl-{current_trace_id() or int(time.time() * 1e6)}",
                created=int(time.time()),
                model=ref["name"],
                choices=[
                    Choice(
                        index=0,
                        message=AssistantMessage(content=answer),
                        finish_reason=finish,
                        confidence=confidence if isinstance(confidence, float) else None,
                    )
                ],
                usage=usage,
                system_fingerprint=f"{ref['name']}-{ref['version']}-{ref['quantization']}",
            )
        with leaf_stage("response"):
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(
                    _stream(completion, include_usage),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            return JSONResponse(completion.model_dump())


@router.get(
    "/models",
    response_model=ModelList,
    responses=error_responses(401, 403, 429),
    summary="The served model, OpenAI-style",
)
async def list_models(request: Request, principal: Principal = Depends(require_api_key)) -> ModelList:
    engine = get_engine(request)
    return ModelList(data=[_card(request, engine)])


@router.get(
    "/models/{model_id}",
    response_model=ModelCard,
    responses=error_responses(401, 403, 404, 429),
    summary="One served model, OpenAI-style",
)
async def retrieve_model(
    model_id: str, request: Request, principal: Principal = Depends(require_api_key)
) -> ModelCard:
    engine = get_engine(request)
    card = _card(request, engine)
    if model_id not in (card.id, SERVICE_NAME, "default"):
        raise ServiceError(ErrorCode.UNKNOWN_MODEL, f"model '{model_id}' is not served here")
    return card


def _card(request: Request, engine: InferenceEngine) -> ModelCard:
    name = engine.describe()["name"] if engine.model is not None else SERVICE_NAME
    return ModelCard(id=name, created=int(request.app.state.started_wall), owned_by=SERVICE_NAME)
