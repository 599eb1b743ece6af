"""``POST /inference`` (alias ``POST /model/inference``): captioning, OCR, VQA and retrieval.

Each request is one ``model_inference`` trace with the guide's stages (authentication →
model_loading → preprocessing → inference → postprocessing → response) and moves the inference
metrics: requests by status, model latency (with the trace id as exemplar), errors by code, and
usage by task and user tier.

Example::

    curl -X POST localhost:8080/inference -H 'Content-Type: application/json' \
         -d '{"image": "data:image/png;base64,...", "task": "captioning"}'
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.trace import Span

from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.observability.tracing import current_trace_id, leaf_stage, set_attributes
from mobile_multimodal.serving.batcher import BatchOutcome
from mobile_multimodal.serving.deps import Principal, authenticated, get_engine, inference_span
from mobile_multimodal.serving.engine import InferenceEngine, Job
from mobile_multimodal.serving.images import decode_image_async
from mobile_multimodal.serving.openapi import error_responses
from mobile_multimodal.serving.runner import check_prompt, image_limits, run_inference
from mobile_multimodal.serving.schemas import InferenceRequest, InferenceResponse

router = APIRouter(tags=["inference"])

_RESPONSES = error_responses(400, 401, 403, 413, 415, 422, 429, 500, 503, 504)


async def _handle(
    body: InferenceRequest, engine: InferenceEngine, span: Span, principal: Principal, started: float
) -> JSONResponse:
    model_type = engine.settings.model_type
    task = body.task
    annotate_request(task=task, model_type=model_type)
    with trace.use_span(span, end_on_exit=False):
        set_attributes(
            span,
            {
                "model.type": model_type,
                "model.task": task,
                "model.quantization": engine.describe()["quantization"],
                "input.size": len(body.image),
            },
        )

        async def preprocess() -> Job:
            # tokens first: a too-long question costs a count, not an image decode
            check_prompt(engine, body.question if task == "vqa" else None, body.texts or ())
            image = await decode_image_async(body.image, image_limits(engine.settings))
            texts = tuple(body.texts) if body.texts else None
            return Job(image=image, question=body.question, texts=texts)

        outcome: BatchOutcome[dict[str, Any]] = await run_inference(
            engine, task, body.tokens(), preprocess, user_type=principal.user_type
        )
        with leaf_stage("postprocessing") as post:
            result = outcome.result
            output_size = len(json.dumps(result, separators=(",", ":")))
            post.set_attribute("batch_size", outcome.batch_size)
            span.set_attribute("output.size", output_size)
        with leaf_stage("response"):
            content = {
                "task": task,
                "result": result,
                "model": engine.describe(),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "trace_id": current_trace_id() or "0" * 32,
            }
            return JSONResponse(content)


@router.post(
    "/inference",
    response_model=InferenceResponse,
    responses=_RESPONSES,
    summary="Run one task on one image",
    operation_id="inference",
)
async def inference(
    body: InferenceRequest,
    request: Request,
    span: Span = Depends(inference_span),
    principal: Principal = Depends(authenticated),
) -> JSONResponse:
    """Caption, read, answer a question about, or embed/score an image (DESIGN.md "HTTP")."""
    return await _handle(body, get_engine(request), span, principal, request.state.started)


@router.post(
    "/model/inference",
    response_model=InferenceResponse,
    responses=_RESPONSES,
    summary="Alias of POST /inference",
    operation_id="model_inference",
)
async def model_inference(
    body: InferenceRequest,
    request: Request,
    span: Span = Depends(inference_span),
    principal: Principal = Depends(authenticated),
) -> JSONResponse:
    """The guide's other name for ``POST /inference``; identical behaviour."""
    return await _handle(body, get_engine(request), span, principal, request.state.started)
