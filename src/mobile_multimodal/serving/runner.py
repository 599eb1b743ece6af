"""The part of a request both inference routes share: stages, batcher errors and metrics.

``POST /inference`` and ``POST /v1/chat/completions`` differ in their bodies only; from "is the
model ready" to "the batch returned" they are the same, and they move the same metrics.

Prompt sizes are checked here too, in tokens, against the loaded model's limits
(:func:`check_prompt`), before the image is decoded and long before any tensor is built.

Example::

    outcome = await run_inference(engine, "captioning", 32, preprocess, user_type="free")
    outcome.result    # {"caption": "..."}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.observability.tracing import leaf_stage, trace_exemplar
from mobile_multimodal.serving.batcher import BatcherClosedError, BatchOutcome, QueueFullError
from mobile_multimodal.serving.engine import InferenceEngine, Job
from mobile_multimodal.serving.errors import ErrorCode, ServiceError
from mobile_multimodal.serving.images import ImageLimits
from mobile_multimodal.settings import Settings

log = logging.getLogger(__name__)

# Metric status label and error_type (error_rate_by_endpoint) for each failure code.
_STATUS = {
    ErrorCode.OVERLOADED: ("rejected", "overload"),
    ErrorCode.SHUTTING_DOWN: ("rejected", "overload"),
    ErrorCode.MODEL_NOT_READY: ("rejected", "overload"),
    ErrorCode.REQUEST_TIMEOUT: ("timeout", "timeout"),
    ErrorCode.INFERENCE_FAILED: ("error", "model_error"),
}


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_body_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )


def retry_after(engine: InferenceEngine) -> str:
    """Seconds until the queue has likely drained: queued batches x a conservative 0.25 s each."""
    batches = math.ceil(engine.batcher.depth / engine.batcher.max_batch_size)
    return str(max(1, math.ceil(batches * 0.25)))


def require_ready(engine: InferenceEngine) -> None:
    """The model_loading stage: the model is loaded once at start; here we only fetch it."""
    if engine.state == "ready":
        return
    if engine.state == "loading":
        raise ServiceError(
            ErrorCode.MODEL_NOT_READY,
            "the model is still loading; retry shortly",
            headers={"Retry-After": "5"},
        )
    if engine.state == "failed":
        reason = engine.error.message if engine.error else "unknown reason"
        raise ServiceError(ErrorCode.MODEL_NOT_READY, f"the model failed to load: {reason}")
    raise ServiceError(ErrorCode.SHUTTING_DOWN, "the server is shutting down", headers={"Retry-After": "5"})


def _too_long(what: str, tokens: int, limit: int) -> ServiceError:
    count = f"more than {limit}" if tokens > limit else str(tokens)
    return ServiceError(
        ErrorCode.PROMPT_TOO_LONG,
        f"{what} has {count} tokens (words and ? , :); the model accepts at most {limit} tokens",
    )


def check_prompt(engine: InferenceEngine, question: str | None, texts: Sequence[str] = ()) -> None:
    """Refuse a question or retrieval text over the model's limit in tokens (422 PROMPT_TOO_LONG).

    Counting stops one token past the limit, so a huge text costs no more than a short one."""
    model = engine.model
    if model is None:
        return  # require_ready answered already; nothing runs without a model
    if question is not None:
        limit = model.max_question_tokens
        n = model.tokenizer.count(question, stop_after=limit)
        if n > limit:
            raise _too_long("the question", n, limit)
    for i, text in enumerate(texts):
        limit = model.max_text_tokens
        n = model.tokenizer.count(text, stop_after=limit)
        if n > limit:
            raise _too_long(f"texts[{i}]", n, limit)


async def submit(
    engine: InferenceEngine, task: str, job: Job, max_tokens: int
) -> BatchOutcome[dict[str, Any]]:
    """Queue the job; turn the batcher's and the model's failures into service errors."""
    try:
        return await engine.infer(task, job, max_tokens)
    except QueueFullError as exc:
        raise ServiceError(
            ErrorCode.OVERLOADED,
            f"the server is overloaded ({exc}); retry later",
            headers={"Retry-After": retry_after(engine)},
        ) from exc
    except BatcherClosedError as exc:
        raise ServiceError(
            ErrorCode.SHUTTING_DOWN, "the server is shutting down", headers={"Retry-After": "5"}
        ) from exc
    except TimeoutError as exc:
        raise ServiceError(
            ErrorCode.REQUEST_TIMEOUT,
            f"no result within {engine.settings.request_timeout_s:g} s (MOBILE_MM_REQUEST_TIMEOUT_S)",
        ) from exc
    except PromptTooLongError as exc:  # check_prompt's limits are the model's own: a second line
        raise _too_long("the prompt", exc.tokens, exc.limit) from exc
    except Exception as exc:  # the model raised: the client gets a 500 with a trace id, never a traceback
        log.exception("inference failed for task %s", task)
        raise ServiceError(ErrorCode.INFERENCE_FAILED, f"inference failed: {type(exc).__name__}") from exc


async def run_inference(
    engine: InferenceEngine,
    task: str,
    max_tokens: int,
    preprocess: Callable[[], Awaitable[Job]],
    *,
    user_type: str,
) -> BatchOutcome[dict[str, Any]]:
    """model_loading → preprocessing → inference stages, with the inference metrics."""
    model_type = engine.settings.model_type
    engine.arriving += 1  # the batcher waits for company only while someone is arriving
    try:
        try:
            with leaf_stage("model_loading"):
                require_ready(engine)
            with leaf_stage("preprocessing"):
                job = await preprocess()
        finally:
            engine.arriving -= 1
            engine.batcher.poke()
        with leaf_stage("inference") as span:
            outcome = await submit(engine, task, job, max_tokens)
            span.set_attribute("batch_size", outcome.batch_size)
            span.set_attribute("queue_ms", round(outcome.queued_s * 1000, 3))
    except ServiceError as exc:
        status, error_type = _STATUS.get(
            exc.code, ("error", "bad_request" if exc.status < 500 else "server_error")
        )
        metrics.INFERENCE_REQUESTS.labels(model_type, task, status).inc()
        metrics.INFERENCE_ERRORS.labels(model_type, task, exc.code.value).inc()
        annotate_request(error_type=error_type)
        raise
    quantization = engine.describe()["quantization"]
    metrics.INFERENCE_REQUESTS.labels(model_type, task, "success").inc()
    metrics.INFERENCE_DURATION.labels(model_type, task, quantization).observe(
        outcome.run_s, exemplar=trace_exemplar()
    )
    metrics.USAGE_BY_TASK.labels(task, user_type).inc()
    confidence = outcome.result.get("confidence")
    if isinstance(confidence, float):
        metrics.PREDICTION_CONFIDENCE.labels(model_type, task).observe(confidence)
    for hook in engine.after_success:  # e.g. the shadow comparator's sampling: returns at once
        hook(task, engine.batch_key(task, max_tokens), job, outcome.result)
    annotate_request(batch_size=outcome.batch_size)
    return outcome
