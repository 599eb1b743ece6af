"""FastAPI dependencies shared by the inference routes: the engine, the trace span, and auth.

The guide's inference trace starts with *authentication*, so the ``model_inference`` span must
exist before the API key is checked. FastAPI resolves dependencies in parameter order, so
:func:`inference_span` (first) opens the span and :func:`authenticated` (second) runs the key
check as its ``authentication`` child; the handler then makes the span current for the later
stages. Auth failures thus show up in the trace.

FastAPI reads and parses a route's JSON body *before* it solves dependencies, so on its own it
would answer a bad key with a malformed body 400, having read all of it. ``auth.py``'s
:class:`~mobile_multimodal.serving.auth.KeyBeforeBodyMiddleware` therefore runs both functions
below when the route first asks for its body: both are idempotent per request, so when FastAPI
then calls them as dependencies they hand back the span and principal already made.

Example::

    @router.post("/inference")
    async def infer(body: Req, span: Span = Depends(inference_span),
                    principal: Principal = Depends(authenticated)) -> ...
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from opentelemetry import trace
from opentelemetry.trace import Span

from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.observability.tracing import leaf_stage, record_failure, stage, start_span
from mobile_multimodal.serving.engine import InferenceEngine
from mobile_multimodal.settings import Settings


class Principal(Protocol):
    """Who made the request (the security package's principal satisfies this)."""

    @property
    def user_id(self) -> str: ...
    @property
    def user_type(self) -> str: ...


@dataclass(frozen=True)
class Anonymous:
    """The principal when auth is disabled and no key was sent."""

    user_id: str = "anonymous"
    user_type: str = "anonymous"


# (request) -> principal; raises an HTTP 401/403/429 error when the key is refused.
Authenticator = Callable[[Request], Awaitable[Principal]]


def get_engine(request: Request) -> InferenceEngine:
    engine: InferenceEngine = request.app.state.engine
    return engine


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


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


KeyCheck = Callable[[Request], Any]


def checks_key_before_body(dependency: KeyCheck) -> KeyCheck:
    """Mark a route dependency that checks the caller's key (an admin check, say): the serving
    layer runs it before the route's body is read, as it does :func:`authenticated`. It must be
    idempotent per request (FastAPI calls it again as the dependency): answer from
    ``request.state`` the second time, as ``require_admin`` does."""
    dependency.__checks_key_before_body__ = True  # type: ignore[attr-defined]
    return dependency


async def authenticated(request: Request) -> Principal:
    """Check the API key inside the ``authentication`` stage of the request's inference span."""
    done: Principal | None = getattr(request.state, "authenticated_principal", None)
    if done is not None:  # checked already, before the body was read
        return done
    authenticate: Authenticator = request.app.state.authenticate
    span: Span | None = getattr(request.state, "inference_span", None)
    parent = trace.set_span_in_context(span) if span is not None else None
    # With auth disabled nothing in here opens a span, so the stage can be a (cheaper) leaf;
    # with keys, the lookup's database spans belong under a full authentication span.
    auth_stage = leaf_stage if request.app.state.settings.auth == "disabled" else stage
    with auth_stage("authentication", None, parent) as auth_span:
        principal = await authenticate(request)
        auth_span.set_attribute("user.type", principal.user_type)
    annotate_request(user_id=principal.user_id, user_type=principal.user_type)
    request.state.authenticated_principal = principal
    return principal
