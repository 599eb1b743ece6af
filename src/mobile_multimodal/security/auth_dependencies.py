"""The auth dependencies routes use, and ``install_security`` that wires them into an app.

:func:`require_api_key` is the one dependency of every keyed route (``POST /inference``, the
OpenAI-compatible routes): it returns the caller's :class:`Principal` or refuses with 401
(MISSING/INVALID/REVOKED_API_KEY) or 429 (RATE_LIMITED, with ``Retry-After``), each refusal
counted, audited and logged by :class:`SecurityContext`. :func:`require_admin` is the admin
routes' (``/export``): 401, or 403 FORBIDDEN for a key without admin rights.

Both are async. With ``MOBILE_MM_AUTH=disabled`` the key check costs no thread hop; otherwise the
key lookup, the rate-limit token and the audit rows (database and, with
``MOBILE_MM_REDIS_URL``, Redis calls) run in a worker thread, off the event loop. When the
database that holds the keys is down (never opened, or stopped answering) a keyed route answers
503 ``DATABASE_UNAVAILABLE`` with ``Retry-After``, and works again, without a restart, once it is
back.

The check is the trace's ``authentication`` stage: a child of ``request.state.inference_span``
when the route opened one (the serving layer's ``model_inference`` span), else of the current
span. Both dependencies are idempotent per request: the serving layer runs them before a route
reads its body (so a bad key with a bad body is a 401, not a 400: see
:func:`checks_key_before_body`), and FastAPI's second call returns the principal already found,
with no second audit row. The principal is also left on ``request.state.principal``.

Example::

    from mobile_multimodal.security import install_security, require_api_key, require_admin, Principal

    install_security(app, settings, db)     # state, error handler, anomaly middleware
    app.include_router(admin_router, dependencies=[Depends(require_admin)])

    @router.post("/inference")
    async def infer(body: InferenceRequest, principal: Principal = Depends(require_api_key)) -> ...:
        metrics.API_REQUESTS_PER_USER.labels(principal.user_id, "/inference").inc()
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from opentelemetry import trace

from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.observability.tracing import leaf_stage, stage
from mobile_multimodal.security.anomaly_middleware import SecurityMiddleware
from mobile_multimodal.security.audit import AuditLog
from mobile_multimodal.security.client_address import client_ip
from mobile_multimodal.security.principal import ANONYMOUS, Principal
from mobile_multimodal.security.security_context import SecurityContext
from mobile_multimodal.security.security_errors import SecurityError, keys_unchecked, security_error_handler
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import DATABASE_DOWN, Database

KeyCheck = TypeVar("KeyCheck", bound=Callable[..., Any])


def checks_key_before_body(dependency: KeyCheck) -> KeyCheck:
    """Mark a dependency that checks the caller's key, so that the serving layer runs it when the
    route first asks for its body, before the body is read: FastAPI reads and parses a body
    before it solves dependencies, and a client without a valid key would otherwise make the
    server buffer up to ``MOBILE_MM_MAX_BODY_BYTES`` and be told about its JSON (400) instead of
    its key (401). The dependency must be async (its database work in a worker thread, as here)
    and idempotent per request (FastAPI calls it again)."""
    if not inspect.iscoroutinefunction(dependency):
        # probably a programming error: the serving layer awaits the check on the event loop
        raise TypeError(f"{dependency!r} must be an async function to check a key before the body")
    dependency.__checks_key_before_body__ = True  # type: ignore[attr-defined]
    return dependency


def install_security(
    app: FastAPI, settings: Settings, db: Database | None, *, audit: AuditLog | None = None
) -> SecurityContext | None:
    """Attach a :class:`SecurityContext` to ``app`` (``app.state.security``), register the
    :class:`SecurityError` handler and add :class:`SecurityMiddleware`. Call it in the app
    factory, before the app starts (Starlette refuses middleware added later).

    Without a database (it could not be opened) there is no context: keyed routes then answer
    503 while ``MOBILE_MM_AUTH=required`` and serve the anonymous caller while it is disabled.
    """
    app.state.security_settings = settings  # the auth mode when there is no context
    app.add_exception_handler(SecurityError, security_error_handler)
    if db is None:
        app.state.security = None
        return None
    context = SecurityContext(settings, db, audit=audit)
    app.state.security = context
    app.add_middleware(SecurityMiddleware, context=context)
    return context


def get_security(request: Request) -> SecurityContext:
    """The app's security context; 503 when keys cannot be checked (no database)."""
    context = _context(request)
    if context is None:
        raise keys_unchecked()
    return context


def _context(request: Request) -> SecurityContext | None:
    state = request.app.state
    context = getattr(state, "security", None)
    if isinstance(context, SecurityContext):
        return context
    if context is None and getattr(state, "security_settings", None) is not None:
        return None  # installed without a database
    raise RuntimeError("security is not set up: call install_security(app, settings, db) in the app factory")


def _auth_required(request: Request, context: SecurityContext | None) -> bool:
    if context is not None:
        return context.auth_required  # the context's settings: tests and reloads may swap them
    settings: Settings = request.app.state.security_settings
    return settings.auth == "required"


def _resource(request: Request) -> str:
    return f"{request.method} {request.url.path}"


async def _in_thread(check: Callable[[], Principal]) -> Principal:
    """Run a key check (database reads, audit writes) in a worker thread; a database that does
    not answer is a 503, not a 500."""
    try:
        return await anyio.to_thread.run_sync(check)
    except DATABASE_DOWN as exc:
        raise keys_unchecked() from exc


@checks_key_before_body
async def require_api_key(request: Request) -> Principal:
    """The caller's principal; 401 (MISSING/INVALID/REVOKED_API_KEY), 429 (RATE_LIMITED) or 503
    (DATABASE_UNAVAILABLE). With ``MOBILE_MM_AUTH=disabled`` every caller is :data:`ANONYMOUS`."""
    done: Principal | None = getattr(request.state, "authenticated_principal", None)
    if done is not None:  # checked already, before the body was read
        return done
    context = _context(request)
    required = _auth_required(request, context)
    span = getattr(request.state, "inference_span", None)
    parent = trace.set_span_in_context(span) if span is not None else None
    # Without keys nothing in here opens a span, so the stage can be a (cheaper) leaf; with keys,
    # the lookup's database spans belong under a full authentication span.
    auth_stage = stage if required else leaf_stage
    with auth_stage("authentication", None, parent) as auth_span:
        if not required:
            principal = ANONYMOUS
        else:
            if context is None:
                raise keys_unchecked()
            checked = context
            ip, resource, headers = client_ip(request.scope), _resource(request), request.headers

            def check() -> Principal:
                principal = checked.authenticate(headers, source_ip=ip, resource=resource)
                checked.check_rate_limit(principal, source_ip=ip, resource=resource)
                return principal

            principal = await _in_thread(check)
        auth_span.set_attribute("user.type", principal.user_type)
    annotate_request(user_id=principal.user_id, user_type=principal.user_type)
    request.state.principal = principal
    request.state.authenticated_principal = principal
    return principal


@checks_key_before_body
async def require_admin(request: Request) -> Principal:
    """An admin principal; 401 without a valid key, 403 FORBIDDEN for a non-admin key or, with
    auth disabled, for a non-loopback client (every refusal counts as an ``unauthorized``
    event); 503 while the database is down. The first call per request writes the
    ``admin.access`` row; a second returns the first one's principal."""
    done = getattr(request.state, "admin_principal", None)
    if isinstance(done, Principal):
        return done
    context = get_security(request)
    ip, resource, headers = client_ip(request.scope), _resource(request), request.headers

    def check() -> Principal:
        principal = context.authorize_admin(headers, source_ip=ip, resource=resource)
        context.check_rate_limit(principal, source_ip=ip, resource=resource)
        return principal

    principal = await _in_thread(check)
    request.state.principal = principal
    request.state.admin_principal = principal
    return principal
