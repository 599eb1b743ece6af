"""API-key authentication for the inference routes, on top of the security package.

:func:`build_authenticator` returns the coroutine :func:`~mobile_multimodal.serving.deps.authenticated`
awaits inside the trace's *authentication* stage. With ``MOBILE_MM_AUTH=disabled`` it returns the
anonymous principal without touching the database (no thread hop on the hot path); otherwise it
runs the security package's ``require_api_key`` (a key lookup, a rate-limit token, audit rows on
refusal) in a worker thread, because those are database calls.

If the store could not be opened, keys cannot be checked: with auth required every inference is
refused with 503 ``DATABASE_UNAVAILABLE`` (``/health`` says why) rather than let anyone in.

:class:`KeyBeforeBodyMiddleware` checks the key of a keyed route (one that depends on
:func:`~mobile_multimodal.serving.deps.authenticated`) before the route reads its body: FastAPI
reads and parses a body before it solves dependencies, so a client without a valid key would
otherwise make the server buffer and parse up to ``MOBILE_MM_MAX_BODY_BYTES`` and be told about
its JSON (400) instead of its key (401).

Example::

    app.state.authenticate = build_authenticator(settings, database)
    principal = await app.state.authenticate(request)
    app.add_middleware(KeyBeforeBodyMiddleware)
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobile_multimodal.observability.tracing import record_failure
from mobile_multimodal.security.auth import require_api_key
from mobile_multimodal.security.context import ANONYMOUS
from mobile_multimodal.serving.deps import Authenticator, Principal, authenticated, open_inference_span
from mobile_multimodal.serving.errors import ErrorCode, ServiceError, public_message
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database

log = logging.getLogger(__name__)


def build_authenticator(settings: Settings, database: Database | None) -> Authenticator:
    if settings.auth == "disabled":

        async def anonymous(request: Request) -> Principal:
            request.state.principal = ANONYMOUS
            return ANONYMOUS

        return anonymous

    if database is None:

        async def unavailable(request: Request) -> Principal:
            raise ServiceError(
                ErrorCode.DATABASE_UNAVAILABLE,
                "API keys cannot be checked: the database is unavailable (see /health)",
                status=503,
                headers={"Retry-After": "30"},
            )

        return unavailable

    async def with_key(request: Request) -> Principal:
        principal: Principal = await anyio.to_thread.run_sync(require_api_key, request)
        return principal

    return with_key


class KeyCheckRefusedError(HTTPException):
    """A :class:`ServiceError` from the key check, raised where FastAPI reads the body: FastAPI
    passes an ``HTTPException`` through from there (anything else becomes a 400 "error parsing
    the body"); the error handlers render its structured detail as the usual error body."""

    def __init__(self, exc: ServiceError) -> None:
        detail: Any = {"code": exc.code.value, "message": public_message(exc)}
        super().__init__(exc.status, detail=detail, headers=exc.headers or None)


def _needs_key(route: object) -> bool:
    """Whether ``authenticated`` is among the route's dependencies (at any depth)."""
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        if dependant.call is authenticated:
            return True
        pending.extend(dependant.dependencies)
    return False


class KeyBeforeBodyMiddleware:
    """Runs the key check of a keyed route when the route first asks for its body, before it.

    Routing has happened by then (``scope["route"]``), so the metrics and logs of a refusal
    carry the route as usual. A refusal raises out of the body read as an ``HTTPException``
    (``SecurityError`` is one), which FastAPI passes on to the error handlers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._keyed: dict[int, bool] = {}  # id(route) -> needs a key; routes live as long as the app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        checked = False

        async def receive_after_key_check() -> Message:
            nonlocal checked
            if not checked:
                checked = True
                route = scope.get("route")
                if route is not None and self._route_needs_key(route):
                    await _check_key(Request(scope))
            return await receive()

        try:
            await self.app(scope, receive_after_key_check, send)
        finally:
            # The key passed but the body failed (malformed JSON): the route's dependencies never
            # ran, so the span opened for the key check is ended here.
            span = scope.get("state", {}).get("inference_span")
            if span is not None and span.is_recording():
                span.end()

    def _route_needs_key(self, route: object) -> bool:
        needs = self._keyed.get(id(route))
        if needs is None:
            needs = self._keyed[id(route)] = _needs_key(route)
        return needs


async def _check_key(request: Request) -> None:
    span = open_inference_span(request)
    try:
        await authenticated(request)
    except HTTPException as exc:  # SecurityError: 401, 403, 429
        record_failure(span, exc)
        span.end()
        raise
    except ServiceError as exc:
        record_failure(span, exc)
        span.end()
        raise KeyCheckRefusedError(exc) from exc
    except Exception as exc:
        log.exception("the API key check failed")
        record_failure(span, exc)
        span.end()
        internal = ServiceError(ErrorCode.INTERNAL_ERROR, "the API key check failed")
        raise KeyCheckRefusedError(internal) from exc
