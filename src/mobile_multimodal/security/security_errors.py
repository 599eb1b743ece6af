"""The exception the security layer refuses requests with: :class:`SecurityError`.

Its codes live with every other error code in :class:`mobile_multimodal.errors.ErrorCode`
(one module for all codes, STYLE.md rule 3); bodies have the service-wide shape (DESIGN.md)::

    {"error": {"code": "INVALID_API_KEY", "message": "..."}, "trace_id": "..."}

:class:`SecurityError` subclasses FastAPI's ``HTTPException`` with ``detail={"code", "message"}``,
so any handler that understands structured details renders it, and
:func:`security_error_handler` (installed by ``install_security``) renders it on its own.

Example::

    raise SecurityError(ErrorCode.REVOKED_API_KEY, "API key k_1a2b was revoked")
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from mobile_multimodal.errors import STATUS, ErrorCode, error_response
from mobile_multimodal.store import DATABASE_RETRY_AFTER_S

# The codes SecurityError may carry: the security layer answers 401, 403, 413 and 429, and 503
# when it cannot check a key because the database is down (keys_unchecked below).
SECURITY_CODES = frozenset(
    {
        ErrorCode.MISSING_API_KEY,
        ErrorCode.INVALID_API_KEY,
        ErrorCode.REVOKED_API_KEY,
        ErrorCode.FORBIDDEN,
        ErrorCode.RATE_LIMITED,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.DATABASE_UNAVAILABLE,
    }
)
KEYS_UNCHECKED = "API keys cannot be checked: the database is unavailable (see /health)"


class SecurityError(HTTPException):
    """An HTTP refusal with a security error code; ``headers`` carry WWW-Authenticate/Retry-After."""

    def __init__(self, code: ErrorCode, message: str, *, headers: dict[str, str] | None = None) -> None:
        if code not in SECURITY_CODES:
            # probably a programming error: an input code or another 5xx is not the security layer's to send
            raise ValueError(f"{code} is not a security error code ({sorted(SECURITY_CODES)})")
        if STATUS[code] == 401:
            headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
        super().__init__(STATUS[code], detail={"code": code.value, "message": message}, headers=headers)
        self.code = code
        self.message = message


def keys_unchecked() -> SecurityError:
    """The refusal of a keyed route while the database that holds the keys is unavailable: 503
    ``DATABASE_UNAVAILABLE`` with ``Retry-After``, never a 500 and never an open door."""
    return SecurityError(
        ErrorCode.DATABASE_UNAVAILABLE, KEYS_UNCHECKED, headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)}
    )


async def security_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI/Starlette exception handler for :class:`SecurityError`."""
    assert isinstance(exc, SecurityError)
    return error_response(exc.code, exc.message, status=exc.status_code, headers=dict(exc.headers or {}))
