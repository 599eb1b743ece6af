"""Check a keyed route's API key before the route reads its body.

FastAPI reads and parses a route's JSON body before it solves the route's dependencies, so on
its own it would make the server buffer and parse up to ``MOBILE_MM_MAX_BODY_BYTES`` for a
client without a valid key, and answer a bad key with a malformed body 400 (its JSON) instead
of 401 (its key). :class:`KeyBeforeBodyMiddleware` runs the route's key checks, the security
dependencies marked with :func:`~mobile_multimodal.security.checks_key_before_body`
(``require_api_key``, ``require_admin``, or a route's own wrapper of them) when the route first
asks for its body. They are idempotent per request, so when FastAPI then calls them as
dependencies they hand back the principal already found.

On a route that traces its inference (it depends on :func:`~.deps.inference_span`), the
``model_inference`` span is opened first, so the key check is its ``authentication`` stage as
usual, and ended here when the request ends before the route's dependencies run.

Example::

    app.add_middleware(KeyBeforeBodyMiddleware)    # innermost: routing has happened
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from opentelemetry.trace import Span
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobile_multimodal.observability.tracing import record_failure
from mobile_multimodal.serving.deps import inference_span, open_inference_span
from mobile_multimodal.serving.error_handlers import ErrorCode, ServiceError, public_message

log = logging.getLogger(__name__)

KeyCheck = Callable[[Request], Any]


class KeyCheckRefusedError(HTTPException):
    """A :class:`ServiceError` from a key check, raised where FastAPI reads the body: FastAPI
    passes an ``HTTPException`` through from there (anything else becomes a 400 "error parsing
    the body"); the error handlers render its structured detail as the usual error body."""

    def __init__(self, exc: ServiceError) -> None:
        detail: Any = {"code": exc.code.value, "message": public_message(exc)}
        super().__init__(exc.status, detail=detail, headers=exc.headers or None)


def _route_checks(route: object) -> tuple[tuple[KeyCheck, ...], bool]:
    """The route's key checks, outermost first (marked dependencies at any depth; what one of
    them depends on runs when it is called), and whether the route opens ``model_inference``."""
    found: list[KeyCheck] = []
    traced = False
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop(0)
        if dependant is None:
            continue
        call = dependant.call
        traced = traced or call is inference_span
        if getattr(call, "__checks_key_before_body__", False):
            if call not in found:
                found.append(call)
            continue
        pending.extend(dependant.dependencies)
    return tuple(found), traced


class KeyBeforeBodyMiddleware:
    """Runs the key checks of a keyed route when the route first asks for its body, before it.

    Routing has happened by then (``scope["route"]``), so the metrics and logs of a refusal
    carry the route as usual. A refusal raises out of the body read as an ``HTTPException``
    (``SecurityError`` is one), which FastAPI passes on to the error handlers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # id(route) -> (its key checks, whether it opens model_inference); routes live as long as the app
        self._checks: dict[int, tuple[tuple[KeyCheck, ...], bool]] = {}

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
                if route is not None:
                    await self._check(route, Request(scope))
            return await receive()

        try:
            await self.app(scope, receive_after_key_check, send)
        finally:
            # The key passed but the body failed (malformed JSON): the route's dependencies never
            # ran, so the span opened for the key check is ended here.
            span = scope.get("state", {}).get("inference_span")
            if span is not None and span.is_recording():
                span.end()

    async def _check(self, route: object, request: Request) -> None:
        found = self._checks.get(id(route))
        if found is None:
            found = self._checks[id(route)] = _route_checks(route)
        checks, traced = found
        if not checks:
            return
        span = open_inference_span(request) if traced else None
        for check in checks:
            try:
                await check(request)
            except HTTPException as exc:  # SecurityError: 401, 403, 429, 503
                _end_failed(span, exc)
                raise
            except ServiceError as exc:  # a route's own check (the export's database check)
                _end_failed(span, exc)
                raise KeyCheckRefusedError(exc) from exc
            except Exception as exc:
                log.exception("the API key check failed")
                _end_failed(span, exc)
                internal = ServiceError(ErrorCode.INTERNAL_ERROR, "the API key check failed")
                raise KeyCheckRefusedError(internal) from exc


def _end_failed(span: Span | None, exc: Exception) -> None:
    if span is not None:
        record_failure(span, exc)
        span.end()
