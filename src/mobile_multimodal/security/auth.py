"""FastAPI wiring: ``install_security`` and the ``require_api_key`` / ``require_admin`` dependencies.

Usage in the app factory (routers per concern, auth as a router dependency)::

    from mobile_multimodal.security import install_security, require_api_key, require_admin, Principal

    security = install_security(app, settings, db)      # state, error handler, middleware
    app.include_router(inference_router, dependencies=[Depends(require_api_key)])
    app.include_router(admin_router, dependencies=[Depends(require_admin)])

    @router.post("/inference")
    def infer(body: InferenceRequest, principal: Principal = Depends(require_api_key)) -> ...:
        metrics.API_REQUESTS_PER_USER.labels(principal.user_id, "/inference").inc()

FastAPI caches a dependency per request, so declaring it on the router and in the endpoint
authenticates once. Both dependencies are sync: FastAPI runs them in its thread pool, where
their database reads and audit writes do not block the event loop. The principal is also left
on ``request.state.principal`` for middleware that logs or counts per user.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from mobile_multimodal.security.audit import AuditLog
from mobile_multimodal.security.context import ANONYMOUS, Principal, SecurityContext
from mobile_multimodal.security.errors import SecurityError, security_error_handler
from mobile_multimodal.security.middleware import SecurityMiddleware
from mobile_multimodal.security.source import client_ip
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database


def install_security(
    app: FastAPI, settings: Settings, db: Database, *, audit: AuditLog | None = None
) -> SecurityContext:
    """Attach a :class:`SecurityContext` to ``app`` (``app.state.security``), register the
    :class:`SecurityError` handler and add :class:`SecurityMiddleware`. Call it in the app
    factory, before the app starts (Starlette refuses middleware added later)."""
    context = SecurityContext(settings, db, audit=audit)
    app.state.security = context
    app.add_exception_handler(SecurityError, security_error_handler)
    app.add_middleware(SecurityMiddleware, context=context)
    return context


def get_security(request: Request) -> SecurityContext:
    context = getattr(request.app.state, "security", None)
    if not isinstance(context, SecurityContext):
        raise RuntimeError(
            "security is not set up: call install_security(app, settings, db) in the app factory"
        )
    return context


def _source_ip(request: Request) -> str:
    return client_ip(request.scope)


def _resource(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def require_api_key(request: Request) -> Principal:
    """The caller's principal; 401 (MISSING/INVALID/REVOKED_API_KEY) or 429 (RATE_LIMITED).

    With ``MOBILE_MM_AUTH=disabled`` every caller is the anonymous free-tier principal.
    """
    context = get_security(request)
    if not context.auth_required:
        principal = ANONYMOUS
    else:
        ip, resource = _source_ip(request), _resource(request)
        principal = context.authenticate(request.headers, source_ip=ip, resource=resource)
        context.check_rate_limit(principal, source_ip=ip, resource=resource)
    request.state.principal = principal
    return principal


def require_admin(request: Request) -> Principal:
    """An admin principal; 401 without a valid key, 403 FORBIDDEN for a non-admin key or, with
    auth disabled, for a non-loopback client. Every refusal counts as an ``unauthorized`` event.

    Idempotent per request (the serving layer may run it before the body is read, and FastAPI
    then again as the route's dependency): the second call returns the first one's principal
    and writes no second ``admin.access`` row.
    """
    done = getattr(request.state, "admin_principal", None)
    if isinstance(done, Principal):
        return done
    context = get_security(request)
    ip, resource = _source_ip(request), _resource(request)
    principal = context.authorize_admin(request.headers, source_ip=ip, resource=resource)
    context.check_rate_limit(principal, source_ip=ip, resource=resource)
    request.state.principal = principal
    request.state.admin_principal = principal
    return principal
