"""``POST /inference`` (alias ``POST /model/inference``): captioning, OCR, VQA and retrieval.

Each request is one ``model_inference`` trace with the guide's stages (authentication →
model_loading → preprocessing → inference → postprocessing → response) and moves the inference
metrics: requests by status, model latency (with the trace id as exemplar), errors by code, and
usage by task and user tier. The route only turns its body into an ``InferenceJob`` and its
outcome into the answer; everything between is request_pipeline.py's, shared with the chat route.

Example::

    curl -X POST localhost:8080/inference -H 'Content-Type: application/json' \
         -d '{"image": "data:image/png;base64,...", "task": "captioning"}'
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.trace import Span

from mobile_multimodal.observability.tracing import current_trace_id, leaf_stage
from mobile_multimodal.security import Principal, require_api_key
from mobile_multimodal.serving.deps import get_engine, inference_span
from mobile_multimodal.serving.openapi import error_responses
from mobile_multimodal.serving.request_pipeline import InferenceJob, run_job
from mobile_multimodal.serving.schemas import InferenceRequest, InferenceResponse

router = APIRouter(tags=["inference"])

_RESPONSES = error_responses(400, 401, 403, 413, 415, 422, 429, 500, 503, 504)
_ALIAS_DESCRIPTION = "The guide's other name for ``POST /inference``; identical behaviour."


# One handler, two paths (DESIGN.md: /model/inference is an alias of /inference).
@router.post(
    "/model/inference",
    response_model=InferenceResponse,
    responses=_RESPONSES,
    summary="Alias of POST /inference",
    description=_ALIAS_DESCRIPTION,
    operation_id="model_inference",
)
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
    principal: Principal = Depends(require_api_key),
) -> JSONResponse:
    """Caption, read, answer a question about, or embed/score an image (DESIGN.md "HTTP")."""
    engine = get_engine(request)
    job = InferenceJob(
        task=body.task,
        max_tokens=body.tokens(),
        image=body.image,
        question=body.question,
        texts=tuple(body.texts) if body.texts else None,
    )
    with trace.use_span(span, end_on_exit=False):
        outcome = await run_job(engine, job, span, user_type=principal.user_type)
        with leaf_stage("postprocessing") as post:
            result = outcome.result
            output_size = len(json.dumps(result, separators=(",", ":")))
            post.set_attribute("batch_size", outcome.batch_size)
            span.set_attribute("output.size", output_size)
        with leaf_stage("response"):
            content = {
                "task": job.task,
                "result": result,
                "model": engine.describe(),
                "latency_ms": round((time.perf_counter() - request.state.started) * 1000, 3),
                "trace_id": current_trace_id() or "0" * 32,
            }
            return JSONResponse(content)
