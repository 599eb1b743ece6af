"""What the app learns about a request while serving it, for the request's log line and metrics.

The middleware opens a :class:`RequestInfo` per HTTP request; route handlers, the auth
dependency and error handlers fill it in with :func:`annotate_request`. The middleware then
writes it into the access log line (``task``, ``batch_size``, ``model_type``), the
``api_requests_per_user`` labels (``user_id``) and the error window (``error_type``).

Example::

    from mobile_multimodal.observability.request_context import annotate_request
    annotate_request(task="captioning", batch_size=4, user_id="alice", user_type="pro")
    annotate_request(error_type="timeout")          # in an error handler
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

# The bounded set of error_type label values (error_rate_by_endpoint); anything else is "other".
ERROR_TYPES = frozenset(
    {
        "bad_request", "unauthorized", "forbidden", "not_found", "payload_too_large", "rate_limited",
        "overload", "timeout", "model_error", "server_error", "other",
    }
)  # fmt: skip


def error_type_for_status(status: int) -> str:
    """The error_type a status code implies when the handler did not name one."""
    return {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "payload_too_large",
        422: "bad_request", 429: "rate_limited", 503: "overload", 504: "timeout",
    }.get(status, "server_error" if status >= 500 else "other")  # fmt: skip


@dataclass
class RequestInfo:
    """Per-request facts; None means "not known for this request" (a null field in the log line)."""

    model_type: str | None = None
    task: str | None = None
    batch_size: int | None = None
    user_id: str = "anonymous"
    user_type: str = "anonymous"
    error_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("mm_request_info", default=None)


def begin_request(model_type: str) -> tuple[RequestInfo, contextvars.Token[RequestInfo | None]]:
    info = RequestInfo(model_type=model_type)
    return info, _current.set(info)


def end_request(token: contextvars.Token[RequestInfo | None]) -> None:
    _current.reset(token)


def current_request() -> RequestInfo | None:
    """The active request's info (the same object the middleware will log), or None outside one."""
    return _current.get()


def annotate_request(**fields: Any) -> None:
    """Record facts about the active request; unknown names go to the log line as extra fields.

    ``error_type`` must be one of :data:`ERROR_TYPES` (the label set stays bounded).
    A no-op outside a request, so library code may call it unconditionally.
    """
    info = _current.get()
    if info is None:
        return
    for key, value in fields.items():
        if key == "error_type" and value not in ERROR_TYPES:
            raise ValueError(f"error_type must be one of {sorted(ERROR_TYPES)}, got {value!r}")
        if key in RequestInfo.__dataclass_fields__ and key != "extra":
            setattr(info, key, value)
        else:
            info.extra[key] = value
