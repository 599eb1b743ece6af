"""API-key authentication for the inference routes, on top of the security package.

:func:`build_authenticator` returns the coroutine :func:`~mobile_multimodal.serving.deps.authenticated`
awaits inside the trace's *authentication* stage. With ``MOBILE_MM_AUTH=disabled`` it returns the
anonymous principal without touching the database (no thread hop on the hot path); otherwise it
runs the security package's ``require_api_key`` (a key lookup, a rate-limit token, audit rows on
refusal) in a worker thread, because those are database calls.

If the store could not be opened, keys cannot be checked: with auth required every inference is
refused with 503 ``DATABASE_UNAVAILABLE`` (``/health`` says why) rather than let anyone in. The
same 503, with ``Retry-After``, answers a key check when the database stops answering while the
server runs (connection refused or lost, an unreadable SQLite file); it works again, without a
restart, as soon as the database does (the pool pings before it hands out a connection).

:class:`KeyBeforeBodyMiddleware` checks the key of a keyed route (one that depends on
:func:`~mobile_multimodal.serving.deps.authenticated`, or on a dependency marked with
:func:`~mobile_multimodal.serving.deps.checks_key_before_body`, as the admin routes' is) before
the route reads its body: FastAPI
reads and parses a body before it solves dependencies, so a client without a valid key would
otherwise make the server buffer and parse up to ``MOBILE_MM_MAX_BODY_BYTES`` and be told about
its JSON (400) instead of its key (401).

Example::

    app.state.authenticate = build_authenticator(settings, database)
    principal = await app.state.authenticate(request)
    app.add_middleware(KeyBeforeBodyMiddleware)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobile_multimodal.observability.tracing import record_failure
from mobile_multimodal.security.auth import require_api_key
from mobile_multimodal.security.context import ANONYMOUS
from mobile_multimodal.serving.database_errors import DATABASE_DOWN, database_unavailable
from mobile_multimodal.serving.deps import Authenticator, Principal, authenticated, open_inference_span
from mobile_multimodal.serving.errors import ErrorCode, ServiceError, public_message
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database

log = logging.getLogger(__name__)
KEYS_UNCHECKED = "API keys cannot be checked: the database is unavailable (see /health)"


def build_authenticator(settings: Settings, database: Database | None) -> Authenticator:
    if settings.auth == "disabled":

        async def anonymous(request: Request) -> Principal:
            request.state.principal = ANONYMOUS
            return ANONYMOUS

        return anonymous

    if database is None:

        async def unavailable(request: Request) -> Principal:
            raise database_unavailable(KEYS_UNCHECKED)

        return unavailable

    async def with_key(request: Request) -> Principal:
        try:
            principal: Principal = await anyio.to_thread.run_sync(require_api_key, request)
        except DATABASE_DOWN as exc:
            raise database_unavailable(KEYS_UNCHECKED) from exc
        return principal

    return with_key


class KeyCheckRefusedError(HTTPException):
    """A :class:`ServiceError` from the key check, raised where FastAPI reads the body: FastAPI
    passes an ``HTTPException`` through from there (anything else becomes a 400 "error parsing
    the body"); the error handlers render its structured detail as the usual error body."""

    def __init__(self, exc: ServiceError) -> None:
        detail: Any = {"code": exc.code.value, "message": public_message(exc)}
        super().__init__(exc.status, detail=detail, headers=exc.headers or None)


def _key_checks(route: object) -> tuple[Callable[[Request], Any], ...]:
    """The route's key checks, outermost first: ``authenticated`` and the dependencies marked
    with :func:`~mobile_multimodal.serving.deps.checks_key_before_body` (at any depth)."""
    found: list[Callable[[Request], Any]] = []
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop(0)
        if dependant is None:
            continue
        call = dependant.call
        if call is authenticated or getattr(call, "__checks_key_before_body__", False):
            if call not in found:
                found.append(call)
            continue  # what it depends on runs when FastAPI calls it
        pending.extend(dependant.dependencies)
    return tuple(found)


class KeyBeforeBodyMiddleware:
    """Runs the key check of a keyed route when the route first asks for its body, before it.

    Routing has happened by then (``scope["route"]``), so the metrics and logs of a refusal
    carry the route as usual. A refusal raises out of the body read as an ``HTTPException``
    (``SecurityError`` is one), which FastAPI passes on to the error handlers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # id(route) -> its key checks; routes live as long as the app
        self._checks: dict[int, tuple[Callable[[Request], Any], ...]] = {}

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
                for check in self._route_checks(route) if route is not None else ():
                    if check is authenticated:
                        await _check_key(Request(scope))
                    else:
                        await _run_check(check, Request(scope))
            return await receive()

        try:
            await self.app(scope, receive_after_key_check, send)
        finally:
            # The key passed but the body failed (malformed JSON): the route's dependencies never
            # ran, so the span opened for the key check is ended here.
            span = scope.get("state", {}).get("inference_span")
            if span is not None and span.is_recording():
                span.end()

    def _route_checks(self, route: object) -> tuple[Callable[[Request], Any], ...]:
        checks = self._checks.get(id(route))
        if checks is None:
            checks = self._checks[id(route)] = _key_checks(route)
        return checks


async def _run_check(check: Callable[[Request], Any], request: Request) -> None:
    """A marked key check (sync ones in a worker thread: they read the database)."""
    try:
        if inspect.iscoroutinefunction(check):
            await check(request)
        else:
            await anyio.to_thread.run_sync(check, request)
    except HTTPException:
        raise
    except DATABASE_DOWN as exc:  # an admin key cannot be checked either
        raise KeyCheckRefusedError(database_unavailable(KEYS_UNCHECKED)) from exc
    except ServiceError as exc:
        raise KeyCheckRefusedError(exc) from exc


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
