"""Every error code the service answers with, and the handlers that turn failures into JSON.

One module holds them all (STYLE.md rule 3) so clients, dashboards and tests share one list.
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
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    """The bounded set of error codes (also the ``error_code`` label of the error metrics)."""

    # --- request shape (4xx) ----------------------------------------------------------------
    INVALID_JSON = "INVALID_JSON"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNSUPPORTED_CONTENT_TYPE = "UNSUPPORTED_CONTENT_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    # The HTTP layer refuses these before the app sees the request (serving/http_limits.py).
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    CLIENT_TOO_SLOW = "CLIENT_TOO_SLOW"
    UNKNOWN_TASK = "UNKNOWN_TASK"
    MISSING_QUESTION = "MISSING_QUESTION"
    INVALID_MAX_TOKENS = "INVALID_MAX_TOKENS"
    INVALID_TEXTS = "INVALID_TEXTS"
    PROMPT_TOO_LONG = "PROMPT_TOO_LONG"  # a question/prompt/text over the model's limit in tokens
    # --- the image (4xx) ---------------------------------------------------------------------
    MISSING_IMAGE = "MISSING_IMAGE"
    INVALID_BASE64 = "INVALID_BASE64"
    INVALID_DATA_URI = "INVALID_DATA_URI"
    UNSUPPORTED_IMAGE_FORMAT = "UNSUPPORTED_IMAGE_FORMAT"
    IMAGE_DECODE_FAILED = "IMAGE_DECODE_FAILED"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"
    # --- OpenAI-compatible route (4xx) -------------------------------------------------------
    UNSUPPORTED_PARAMETER = "UNSUPPORTED_PARAMETER"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    # --- routing / auth (4xx) ----------------------------------------------------------------
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNAUTHORIZED = "UNAUTHORIZED"
    # The security package raises these (security/errors.py: SecurityError carries one of them).
    MISSING_API_KEY = "MISSING_API_KEY"  # no Authorization: Bearer / X-API-Key header
    INVALID_API_KEY = "INVALID_API_KEY"  # malformed, unknown, or a non-Bearer scheme
    REVOKED_API_KEY = "REVOKED_API_KEY"  # a real key that `mobile-mm keys revoke` revoked
    FORBIDDEN = "FORBIDDEN"  # authenticated, but not allowed here (admin routes)
    RATE_LIMITED = "RATE_LIMITED"  # the key's token bucket is empty; see Retry-After
    # --- mobile export (POST /export): errors.ExportErrorCode's refusals, as HTTP answers ----------
    UNSUPPORTED_PLATFORM_FORMAT = "UNSUPPORTED_PLATFORM_FORMAT"  # e.g. coreml for android
    EXPORT_DEPENDENCY_MISSING = "EXPORT_DEPENDENCY_MISSING"  # this server lacks the format's toolchain
    EXPORT_IN_PROGRESS = "EXPORT_IN_PROGRESS"  # one export at a time; see Retry-After
    # --- the service (5xx) -------------------------------------------------------------------
    OVERLOADED = "OVERLOADED"
    MODEL_NOT_READY = "MODEL_NOT_READY"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INFERENCE_FAILED = "INFERENCE_FAILED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # --- health checks (in /health "errors", not HTTP bodies) --------------------------------
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    MODEL_LOADING = "MODEL_LOADING"
    MODEL_PROBE_FAILED = "MODEL_PROBE_FAILED"
    MODEL_INTEGRITY_FAILED = "MODEL_INTEGRITY_FAILED"  # model files on disk differ from the manifest
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    MEMORY_HIGH = "MEMORY_HIGH"
    DISK_LOW = "DISK_LOW"


# The HTTP status each code is answered with.
STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNSUPPORTED_CONTENT_TYPE: 415,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.CLIENT_TOO_SLOW: 408,
    ErrorCode.UNKNOWN_TASK: 422,
    ErrorCode.MISSING_QUESTION: 422,
    ErrorCode.INVALID_MAX_TOKENS: 422,
    ErrorCode.INVALID_TEXTS: 422,
    ErrorCode.PROMPT_TOO_LONG: 422,
    ErrorCode.MISSING_IMAGE: 422,
    ErrorCode.INVALID_BASE64: 400,
    ErrorCode.INVALID_DATA_URI: 400,
    ErrorCode.UNSUPPORTED_IMAGE_FORMAT: 415,
    ErrorCode.IMAGE_DECODE_FAILED: 400,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.IMAGE_TOO_SMALL: 422,
    ErrorCode.UNSUPPORTED_PARAMETER: 400,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.MISSING_API_KEY: 401,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.REVOKED_API_KEY: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNSUPPORTED_PLATFORM_FORMAT: 422,
    ErrorCode.EXPORT_DEPENDENCY_MISSING: 422,
    ErrorCode.EXPORT_IN_PROGRESS: 409,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.MODEL_NOT_READY: 503,
    ErrorCode.REQUEST_TIMEOUT: 504,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.INFERENCE_FAILED: 500,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.MODEL_LOAD_FAILED: 503,
    ErrorCode.MODEL_LOADING: 503,
    ErrorCode.MODEL_PROBE_FAILED: 503,
    ErrorCode.MODEL_INTEGRITY_FAILED: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.MEMORY_HIGH: 503,
    ErrorCode.DISK_LOW: 503,
}


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


def current_trace_id() -> str:
    """The hex trace id of the active span, or 32 zeros when tracing is off."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x")


def error_body(code: ErrorCode | str, message: str, trace_id: str | None = None) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message}, "trace_id": trace_id or current_trace_id()}


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


def error_response(
    code: ErrorCode, message: str, *, status: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message), status_code=status if status is not None else STATUS[code], headers=headers
    )


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


_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.VALIDATION_ERROR,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_CONTENT_TYPE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.OVERLOADED,
}


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
        code = _HTTP_CODES.get(
            exc.status_code,
            ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else ErrorCode.VALIDATION_ERROR,
        )
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
