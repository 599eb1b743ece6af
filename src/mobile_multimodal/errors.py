"""Every error code, its HTTP status and the error body's shape (DESIGN.md "Layers": shared basics).

They sit at the bottom so that every layer can name a code without importing the service:
observability's health checks, security's refusals and the export all use them; ``serving/error_handlers.py``
adds the service's exception and handlers on top. Export failures have their own enum
(:class:`ExportErrorCode`), which ``serving`` maps onto HTTP answers where a route surfaces them.
Every code is UPPER_SNAKE and stable: metrics, logs and tests use it.

Example::

    raise ExportError(ExportErrorCode.UNSUPPORTED_PLATFORM_FORMAT, "coreml runs on ios only")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from opentelemetry import trace
from starlette.responses import JSONResponse


class ExportErrorCode(StrEnum):
    """Why a mobile export failed (``mobile-mm export``, ``POST /export``)."""

    # --- the request: refused before any work -------------------------------------------------
    UNKNOWN_PLATFORM = "UNKNOWN_PLATFORM"
    UNKNOWN_FORMAT = "UNKNOWN_FORMAT"
    UNSUPPORTED_PLATFORM_FORMAT = "UNSUPPORTED_PLATFORM_FORMAT"  # e.g. coreml for android
    UNKNOWN_QUANTIZATION = "UNKNOWN_QUANTIZATION"
    EXPORT_OUTPUT_EXISTS = "EXPORT_OUTPUT_EXISTS"  # --out is a non-empty directory
    # --- the environment ------------------------------------------------------------------------
    EXPORT_DEPENDENCY_MISSING = "EXPORT_DEPENDENCY_MISSING"  # the message names the pip command
    EXPORT_OUTPUT_UNWRITABLE = "EXPORT_OUTPUT_UNWRITABLE"  # read-only or permission denied
    EXPORT_DISK_FULL = "EXPORT_DISK_FULL"
    # --- the work ---------------------------------------------------------------------------------
    EXPORT_MODEL_INVALID = "EXPORT_MODEL_INVALID"  # the model (or its quantized variant) did not load
    EXPORT_CONVERSION_FAILED = "EXPORT_CONVERSION_FAILED"  # the toolchain rejected a graph
    EXPORT_VALIDATION_FAILED = "EXPORT_VALIDATION_FAILED"  # the artifact disagrees with PyTorch
    EXPORT_INTERRUPTED = "EXPORT_INTERRUPTED"  # Ctrl-C / SIGTERM during the export
    # --- POST /export jobs (the child process that runs the export) ------------------------------
    EXPORT_TIMEOUT = "EXPORT_TIMEOUT"  # ran past MOBILE_MM_EXPORT_TIMEOUT_S and was stopped
    EXPORT_PROCESS_FAILED = "EXPORT_PROCESS_FAILED"  # died without recording an outcome (killed, OOM)


class ExportError(RuntimeError):
    """An export that did not produce a bundle: a code and a message a user can act on."""

    def __init__(self, code: ExportErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@contextmanager
def conversion_errors(what: str) -> Iterator[None]:
    """A toolchain's own errors (many and untyped) as ``EXPORT_CONVERSION_FAILED``, the message
    naming the step (``what``: "ONNX export of graph 'vision'"); an ExportError passes unchanged.

    Example::

        with conversion_errors(f"Core ML conversion of graph {spec.name!r}"):
            mlmodel = convert(spec)
    """
    try:
        yield
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(ExportErrorCode.EXPORT_CONVERSION_FAILED, f"{what} failed: {exc}") from exc


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
    # The security package raises these (security/security_errors.py: SecurityError carries one).
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


# The code an HTTP error without one of ours is answered with (a bare HTTPException, a route
# Starlette does not know); statuses not here: INTERNAL_ERROR (5xx) or VALIDATION_ERROR.
CODE_FOR_STATUS: dict[int, ErrorCode] = {
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


def code_for_status(status: int) -> ErrorCode:
    return CODE_FOR_STATUS.get(
        status, ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.VALIDATION_ERROR
    )


# How a failed inference shows in the metrics: the ``status`` label of
# model_inference_requests_total and the ``error_type`` of error_rate_by_endpoint. Codes not
# here are "error", with error_type bad_request (4xx) or server_error (5xx).
INFERENCE_OUTCOME: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.OVERLOADED: ("rejected", "overload"),
    ErrorCode.SHUTTING_DOWN: ("rejected", "overload"),
    ErrorCode.MODEL_NOT_READY: ("rejected", "overload"),
    ErrorCode.REQUEST_TIMEOUT: ("timeout", "timeout"),
    ErrorCode.INFERENCE_FAILED: ("error", "model_error"),
}


def inference_outcome(code: ErrorCode, status: int | None = None) -> tuple[str, str]:
    """(metric status, error_type) of an inference that failed with ``code``."""
    status = STATUS[code] if status is None else status
    return INFERENCE_OUTCOME.get(code, ("error", "bad_request" if status < 500 else "server_error"))


def current_trace_id() -> str:
    """The hex trace id of the active span, or 32 zeros when tracing is off."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x")


def error_body(code: ErrorCode | str, message: str, trace_id: str | None = None) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message}, "trace_id": trace_id or current_trace_id()}


def error_response(
    code: ErrorCode, message: str, *, status: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message), status_code=status if status is not None else STATUS[code], headers=headers
    )
