"""FastAPI dependencies shared by the inference routes: the engine and the trace span (auth is
security's ``require_api_key``).

The guide's inference trace starts with *authentication*, so the ``model_inference`` span must
exist before the API key is checked. FastAPI resolves dependencies in parameter order, so
:func:`inference_span` (first) opens the span and the security package's ``require_api_key``
(second) runs the key check as its ``authentication`` child; the handler then makes the span
current for the later stages. Auth failures thus show up in the trace.

The key is checked before the route reads its body (``key_before_body.py``), which opens the
span through :func:`open_inference_span`; both are idempotent per request, so FastAPI's calls
then hand back the span and principal already made.

Example::

    @router.post("/inference")
    async def infer(body: Req, span: Span = Depends(inference_span),
                    principal: Principal = Depends(require_api_key)) -> ...
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request
from opentelemetry.trace import Span

from mobile_multimodal.observability.tracing import record_failure, start_span
from mobile_multimodal.serving.engine import InferenceEngine


def get_engine(request: Request) -> InferenceEngine:
    engine: InferenceEngine = request.app.state.engine
    return engine


def open_inference_span(request: Request) -> Span:
    """The request's ``model_inference`` span (child of the HTTP server span), opened on first call."""
    span: Span | None = getattr(request.state, "inference_span", None)
    if span is None:
        request.state.started = time.perf_counter()
        span = start_span("model_inference")
        request.state.inference_span = span
    return span


async def inference_span(request: Request) -> AsyncIterator[Span]:
    """Open ``model_inference`` (or take the one opened already); end it however the request ends."""
    span = open_inference_span(request)
    try:
        yield span
    except BaseException as exc:
        record_failure(span, exc)
        raise
    finally:
        if span.is_recording():
            span.end()
