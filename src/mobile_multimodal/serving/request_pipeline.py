"""The one path of an inference request, from "the body is parsed" to "the batch returned".

``POST /inference`` (and its alias) and ``POST /v1/chat/completions`` differ in their bodies and
their answers only. Each turns its body into an :class:`InferenceJob` and hands it to
:func:`run_job`, which owns everything between:

1. span attributes (``model.type``, ``model.task``, ``model.quantization``, ``input.size``) and
   the request's log fields;
2. ``model_loading``: the model is ready, else 503 ``MODEL_NOT_READY`` / ``SHUTTING_DOWN``;
3. ``preprocessing``: the prompt's size in tokens (a count, before any image work), admission
   (a request the engine would refuse is refused *before* its image is decoded), then the
   image, decoded the same way for every route (inline when small, on a worker thread when
   large: images.py);
4. ``inference``: :meth:`InferenceEngine.admit` queues the job (or refuses it: by count or by
   expected wait, admission.py) and waits for its batch;
5. error mapping: every failure of steps 2-4 becomes a :class:`ServiceError` (its status from
   ``mobile_multimodal.errors.STATUS``) and moves the inference metrics, as a success does.

Requests refused before their body is read never reach here (early_refusal.py).

Example::

    job = InferenceJob(task="captioning", max_tokens=32, image=body.image)
    with trace.use_span(span, end_on_exit=False):
        outcome = await run_job(engine, job, span, user_type=principal.user_type)
    outcome.result    # {"caption": "..."}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span

from mobile_multimodal.errors import inference_outcome
from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.model_metrics import kv_cache_peak_bytes
from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.observability.tracing import leaf_stage, set_attributes, trace_exemplar
from mobile_multimodal.serving.admission import EngineOverloaded
from mobile_multimodal.serving.batcher import BatcherClosedError, BatchOutcome, QueueFullError
from mobile_multimodal.serving.engine import InferenceEngine, Job
from mobile_multimodal.serving.error_handlers import ErrorCode, ServiceError
from mobile_multimodal.serving.images import ImageLimits, decode_image_async
from mobile_multimodal.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceJob:
    """What a route asks of the model: the task, its token budget, the undecoded image (base64
    or a data URI), and the task's text inputs."""

    task: str
    max_tokens: int
    image: str
    question: str | None = None
    texts: tuple[str, ...] | None = None


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_body_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )


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


def overloaded(exc: EngineOverloaded, stage: str) -> ServiceError:
    """503 OVERLOADED with a Retry-After from the expected wait; counted by reason and stage."""
    refusal = exc.refusal
    metrics.ADMISSION_REFUSALS.labels(refusal.reason, stage).inc()
    return ServiceError(
        ErrorCode.OVERLOADED,
        f"the server is overloaded ({refusal.message}); retry later",
        headers={"Retry-After": str(refusal.retry_after_s)},
    )


def service_error(exc: BaseException, engine: InferenceEngine, task: str) -> ServiceError:
    """What the client is told when admission, the queue or the model failed a request."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, EngineOverloaded):
        return overloaded(exc, "at_queue")
    if isinstance(exc, QueueFullError):  # the batcher's own bound (admission checks it first)
        return ServiceError(
            ErrorCode.OVERLOADED,
            f"the server is overloaded ({exc}); retry later",
            headers={"Retry-After": str(max(1, math.ceil(engine.expected_wait_s())))},
        )
    if isinstance(exc, BatcherClosedError):
        return ServiceError(
            ErrorCode.SHUTTING_DOWN, "the server is shutting down", headers={"Retry-After": "5"}
        )
    if isinstance(exc, TimeoutError):
        return ServiceError(
            ErrorCode.REQUEST_TIMEOUT,
            f"no result within {engine.settings.request_timeout_s:g} s (MOBILE_MM_REQUEST_TIMEOUT_S)",
        )
    if isinstance(exc, PromptTooLongError):  # check_prompt's limits are the model's own: a second line
        return _too_long("the prompt", exc.tokens, exc.limit)
    # the model raised: the client gets a 500 with a trace id, never a traceback
    log.error("inference failed for task %s", task, exc_info=exc)
    return ServiceError(ErrorCode.INFERENCE_FAILED, f"inference failed: {type(exc).__name__}")


async def submit(
    engine: InferenceEngine, task: str, job: Job, max_tokens: int
) -> BatchOutcome[dict[str, Any]]:
    """Admit the job into the engine and wait for it; failures as ServiceError (the probe's way in)."""
    try:
        return await engine.admit(task, job, max_tokens)
    except Exception as exc:
        raise service_error(exc, engine, task) from exc


async def _prepare(engine: InferenceEngine, job: InferenceJob) -> Job:
    # tokens first: a too-long question costs a count, not an image decode
    check_prompt(engine, job.question if job.task == "vqa" else None, job.texts or ())
    try:
        engine.check_admission(job.task)  # a refusal now costs no decode
    except EngineOverloaded as exc:
        raise overloaded(exc, "before_decode") from exc
    image = await decode_image_async(job.image, image_limits(engine.settings))
    return Job(image=image, question=job.question, texts=job.texts)


async def run_job(
    engine: InferenceEngine, job: InferenceJob, span: Span, *, user_type: str
) -> BatchOutcome[dict[str, Any]]:
    """model_loading → preprocessing → inference stages, with the inference metrics.

    Call it with ``span`` (the request's ``model_inference`` span) current."""
    model_type = engine.settings.model_type
    task = job.task
    annotate_request(task=task, model_type=model_type)
    set_attributes(
        span,
        {
            "model.type": model_type,
            "model.task": task,
            "model.quantization": engine.describe()["quantization"],
            "input.size": len(job.image),
        },
    )
    try:
        with engine.arrival():  # the batcher waits for company only while someone is arriving
            with leaf_stage("model_loading"):
                require_ready(engine)
            with leaf_stage("preprocessing"):
                prepared = await _prepare(engine, job)
        with leaf_stage("inference") as stage_span:
            outcome = await submit(engine, task, prepared, job.max_tokens)
            stage_span.set_attribute("batch_size", outcome.batch_size)
            stage_span.set_attribute("queue_ms", round(outcome.queued_s * 1000, 3))
    except ServiceError as exc:
        status, error_type = inference_outcome(exc.code, exc.status)
        metrics.INFERENCE_REQUESTS.labels(model_type, task, status).inc()
        metrics.INFERENCE_ERRORS.labels(model_type, task, exc.code.value).inc()
        annotate_request(error_type=error_type)
        raise
    _record_success(engine, job, prepared, outcome, user_type)
    return outcome


def _record_success(
    engine: InferenceEngine,
    job: InferenceJob,
    prepared: Job,
    outcome: BatchOutcome[dict[str, Any]],
    user_type: str,
) -> None:
    model_type, task = engine.settings.model_type, job.task
    quantization = engine.describe()["quantization"]
    metrics.INFERENCE_REQUESTS.labels(model_type, task, "success").inc()
    metrics.INFERENCE_DURATION.labels(model_type, task, quantization).observe(
        outcome.run_s, exemplar=trace_exemplar()
    )
    metrics.USAGE_BY_TASK.labels(task, user_type).inc()
    confidence = outcome.result.get("confidence")
    if isinstance(confidence, float):
        metrics.PREDICTION_CONFIDENCE.labels(model_type, task).observe(confidence)
    if outcome.result.get("out_of_domain") is True:
        metrics.OUT_OF_DOMAIN_INPUTS.labels(model_type, task).inc()
    # a request's decode may hold a larger KV cache than the warm-up's (more tokens)
    peak_cache = kv_cache_peak_bytes(engine.model)
    if peak_cache > 0:
        metrics.MODEL_MEMORY.labels(model_type, "kv_cache_peak").set(peak_cache)
    for hook in engine.after_success:  # e.g. the shadow comparator's sampling: returns at once
        hook(task, engine.batch_key(task, job.max_tokens), prepared, outcome.result)
    annotate_request(batch_size=outcome.batch_size)
