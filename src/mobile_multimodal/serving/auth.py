"""API-key authentication for the inference routes, on top of the security package.

:func:`build_authenticator` returns the coroutine :func:`~mobile_multimodal.serving.deps.authenticated`
awaits inside the trace's *authentication* stage. With ``MOBILE_MM_AUTH=disabled`` it returns the
anonymous principal without touching the database (no thread hop on the hot path); otherwise it
runs the security package's ``require_api_key`` (a key lookup, a rate-limit token, audit rows on
refusal) in a worker thread, because those are database calls.

If the store could not be opened, keys cannot be checked: with auth required every inference is
refused with 503 ``DATABASE_UNAVAILABLE`` (``/health`` says why) rather than let anyone in.

Example::

    app.state.authenticate = build_authenticator(settings, database)
    principal = await app.state.authenticate(request)
"""

from __future__ import annotations

import anyio
from fastapi import Request

from mobile_multimodal.security.auth import require_api_key
from mobile_multimodal.security.context import ANONYMOUS
from mobile_multimodal.serving.deps import Authenticator, Principal
from mobile_multimodal.serving.errors import ErrorCode, ServiceError
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database


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
