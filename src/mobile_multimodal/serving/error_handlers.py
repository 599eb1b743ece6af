"""The service's exception and the handlers that turn every failure into the JSON error body.

The codes and their statuses live in the ground floor's ``mobile_multimodal/errors.py`` (STYLE.md
rule 3: one list for clients, dashboards and tests); this module is the HTTP side of them.
Every error body has the same shape::

    {"error": {"code": "UPPER_SNAKE", "message": "what went wrong and what to do"}, "trace_id": "..."}

Raise :class:`ServiceError` anywhere in a request; :func:`install_error_handlers` maps it, FastAPI's
validation errors, Starlette's HTTP errors and anything unexpected onto that shape, so bad input is
always a 4xx with a code and an unexpected failure a 500 that never leaks a traceback.

Example::

    raise ServiceError(ErrorCode.MISSING_QUESTION, "task 'vqa' needs a 'question'")
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mobile_multimodal.errors import (
    STATUS,
    ErrorCode,
    code_for_status,
    current_trace_id,
    error_body,
    error_response,
)

# The codes, their statuses (STATUS: the one code -> status table; code_for_status for a bare HTTP
# error; inference_outcome for the metrics) and the body shape live in the bottom layer
# (mobile_multimodal.errors) so observability and security can use them; the service's exception
# and handlers live here.
__all__ = [
    "INTERNAL_MESSAGES",
    "STATUS",
    "ErrorCode",
    "ServiceError",
    "current_trace_id",
    "error_body",
    "error_response",
    "install_error_handlers",
    "public_message",
]

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure with a code, a message a user can act on, and optional response headers."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS[code]
        self.headers = headers or {}


# What a 500 tells the caller. Its cause (an exception class, a file name, a tensor shape) is a
# fact about our code, not about the request: whoever raises logs it, under the same trace id.
INTERNAL_MESSAGES = {
    ErrorCode.INFERENCE_FAILED: "inference failed; the trace id identifies the cause in the logs",
    ErrorCode.INTERNAL_ERROR: "internal error; the trace id identifies the cause in the logs",
}


def public_message(exc: ServiceError) -> str:
    """The message a client may see: a 500's is generic, whatever the raiser put in it."""
    if exc.status >= 500 and exc.code in INTERNAL_MESSAGES:
        return INTERNAL_MESSAGES[exc.code]
    return exc.message


# Pydantic error types / field names that deserve a more specific code than VALIDATION_ERROR.
_FIELD_CODES: dict[str, ErrorCode] = {
    "task": ErrorCode.UNKNOWN_TASK,
    "max_tokens": ErrorCode.INVALID_MAX_TOKENS,
    "max_completion_tokens": ErrorCode.INVALID_MAX_TOKENS,
    "texts": ErrorCode.INVALID_TEXTS,
}


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


def validation_error_to_service_error(exc: RequestValidationError) -> ServiceError:
    """Pick the most specific code for the first validation error and say which field is wrong."""
    errors = exc.errors()
    if not errors:
        return ServiceError(ErrorCode.VALIDATION_ERROR, "the request is invalid")
    first = errors[0]
    err_type = str(first.get("type", ""))
    loc = tuple(first.get("loc", ()))
    field = _format_loc(loc)
    msg = str(first.get("msg", "invalid value"))
    if err_type == "json_invalid":
        return ServiceError(ErrorCode.INVALID_JSON, f"the body is not valid JSON: {msg}")
    upper = err_type.upper()
    if upper in ErrorCode.__members__:  # custom errors raised by our validators carry their code as type
        return ServiceError(ErrorCode[upper], msg)
    if field == "image" and err_type == "missing":
        return ServiceError(ErrorCode.MISSING_IMAGE, "field 'image' is required (base64 or a data URI)")
    code = _FIELD_CODES.get(str(loc[-1]) if loc else "", ErrorCode.VALIDATION_ERROR)
    if field == "body" and err_type in {"model_attributes_type", "dict_type", "model_type"}:
        return ServiceError(ErrorCode.VALIDATION_ERROR, "the body must be a JSON object")
    extra = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
    return ServiceError(code, f"field '{field}': {msg}{extra}")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure with the common error body."""

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc.code, public_message(exc), status=exc.status, headers=dict(exc.headers))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        err = validation_error_to_service_error(exc)
        return error_response(err.code, err.message, status=err.status)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail
        # The security dependency may raise with a structured detail {"code", "message"}.
        if isinstance(detail, dict) and "code" in detail:
            code_str = str(detail["code"])
            message = str(detail.get("message", ""))
            code = ErrorCode[code_str] if code_str in ErrorCode.__members__ else None
            body = error_body(code or code_str, message)
            return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))
        code = code_for_status(exc.status_code)
        message = str(detail) if detail else code.value.replace("_", " ").lower()
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(code, message, status=exc.status_code, headers=dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGES[ErrorCode.INTERNAL_ERROR])

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
