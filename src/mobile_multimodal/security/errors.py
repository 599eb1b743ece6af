"""The exception the security layer refuses requests with.

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

# The codes SecurityError may carry: the security layer answers 401, 403, 413 and 429 only.
SECURITY_CODES = frozenset(
    {
        ErrorCode.MISSING_API_KEY,
        ErrorCode.INVALID_API_KEY,
        ErrorCode.REVOKED_API_KEY,
        ErrorCode.FORBIDDEN,
        ErrorCode.RATE_LIMITED,
        ErrorCode.PAYLOAD_TOO_LARGE,
    }
)


class SecurityError(HTTPException):
    """An HTTP refusal with a security error code; ``headers`` carry WWW-Authenticate/Retry-After."""

    def __init__(self, code: ErrorCode, message: str, *, headers: dict[str, str] | None = None) -> None:
        if code not in SECURITY_CODES:
            # probably a programming error: a 5xx or input code is not the security layer's to send
            raise ValueError(f"{code} is not a security error code ({sorted(SECURITY_CODES)})")
        if STATUS[code] == 401:
            headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
        super().__init__(STATUS[code], detail={"code": code.value, "message": message}, headers=headers)
        self.code = code
        self.message = message


async def security_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI/Starlette exception handler for :class:`SecurityError`."""
    assert isinstance(exc, SecurityError)
    return error_response(exc.code, exc.message, status=exc.status_code, headers=dict(exc.headers or {}))
