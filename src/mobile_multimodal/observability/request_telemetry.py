"""The ASGI middleware that gives every HTTP request its span, metrics and log line.

Pure ASGI (no BaseHTTPMiddleware) to keep its cost to a few tens of microseconds. Per request:

- a server span continued from the caller's W3C ``traceparent`` (except for the polled routes,
  ``/metrics`` and the health checks, which are never traced), named ``METHOD /route``;
- ``http_requests_total`` and ``http_request_duration_seconds`` (with a trace_id exemplar),
  ``api_requests_per_user_total`` for API routes, and the ``error_rate_by_endpoint`` window;
- one JSON access line (sampled for successes per ``logging.request_sample_ratio``; errors and
  slow requests always), with the request's ``duration_ms``, ``model_type``, ``task``,
  ``batch_size`` and ``memory_mb``;
- an ``X-Trace-Id`` response header, so a client can quote the trace of a failed call.

Example::

    app.add_middleware(ObservabilityMiddleware, cfg=config, window=ErrorRateWindow(), model_type="multimodal")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.config import ObservabilityConfig
from mobile_multimodal.observability.error_window import ErrorRateWindow
from mobile_multimodal.observability.logging import RequestLogRecord, process_memory_mb
from mobile_multimodal.observability.request_context import begin_request, end_request, error_type_for_status
from mobile_multimodal.observability.tracing import start_span

_log = logging.getLogger("mobile_multimodal.access")
_UNMATCHED = "unmatched"  # label for paths no route matched: keeps the endpoint label bounded
_ROOT = otel_context.Context()  # no caller context: the request starts a trace
# Any token is a valid HTTP method; a label per invented one would let a client grow the series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MAX_CACHED_CHILDREN = 4096  # label sets whose metric children are kept (bounded labels: a few dozen)


def _cached(cache: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
    """``cache[key]``, made by ``make()`` on first use; a full cache makes without keeping."""
    value = cache.get(key)
    if value is None:
        value = make()
        if len(cache) < _MAX_CACHED_CHILDREN:
            cache[key] = value
    return value


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else _UNMATCHED


def _sampled_for_log(trace_id: int, ratio: float) -> bool:
    # Decide on the trace id (same rule as TraceIdRatioBased) so a request's log line and its
    # trace are kept or dropped together when both sample at the same ratio.
    if ratio >= 1.0:
        return True
    return (trace_id & 0xFFFFFFFFFFFFFFFF) < int(ratio * (1 << 64))


class ObservabilityMiddleware:
    def __init__(
        self, app: ASGIApp, cfg: ObservabilityConfig, window: ErrorRateWindow, model_type: str
    ) -> None:
        self.app = app
        self.cfg = cfg
        self.window = window
        self.model_type = model_type
        self.untraced = frozenset(cfg.tracing.excluded_paths)
        # Header names the configured propagators read (traceparent, tracestate, baggage, ...):
        # without any of them there is no caller context to extract, and the request skips it.
        fields = propagate.get_global_textmap().fields
        self.propagation_headers = frozenset(f.lower().encode("latin-1") for f in fields)
        # prometheus_client's labels() costs ~1.2 us per call; the label sets here are few and fixed
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._user_children: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        polled = path in self.untraced
        info, info_token = begin_request(self.model_type)
        span: trace.Span = trace.INVALID_SPAN
        ctx_token = None
        if not polled:
            headers = scope["headers"]
            fields = self.propagation_headers
            if any(k in fields for k, _ in headers):
                parent = propagate.extract({k.decode("latin-1"): v.decode("latin-1") for k, v in headers})
            else:
                parent = _ROOT  # what extract() returns without those headers: no caller context
            span = start_span(
                f"{method} {path}",
                parent,
                SpanKind.SERVER,
                {"http.request.method": method, "url.path": path, "url.scheme": scope["scheme"]},
            )
            ctx_token = otel_context.attach(trace.set_span_in_context(span, parent))
        span_ctx = span.get_span_context()
        trace_hex = format(span_ctx.trace_id, "032x") if span_ctx.is_valid else None
        trace_header = trace_hex.encode() if trace_hex is not None else None
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if trace_header is not None:
                    message["headers"] = [*message.get("headers", []), (b"x-trace-id", trace_header)]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            error = exc
            raise
        finally:
            duration = time.perf_counter() - start
            self._finish(scope, method, path, polled, status, duration, info, span, trace_hex, error)
            if ctx_token is not None:
                otel_context.detach(ctx_token)
            end_request(info_token)

    def _finish(
        self,
        scope: Scope,
        method: str,
        path: str,
        polled: bool,
        status: int,
        duration: float,
        info: Any,
        span: trace.Span,
        trace_hex: str | None,
        error: BaseException | None,
    ) -> None:
        endpoint = _route_template(scope)
        label_method = method if method in _METHODS else "other"
        span_ctx = span.get_span_context()
        # only sampled traces are worth linking to from the histogram
        exemplar = {"trace_id": trace_hex} if trace_hex is not None and span_ctx.trace_flags.sampled else None
        requests, durations = _cached(
            self._http_children,
            (endpoint, label_method, status),
            lambda: (
                metrics.HTTP_REQUESTS.labels(endpoint, label_method, str(status)),
                metrics.HTTP_REQUEST_DURATION.labels(endpoint, label_method),
            ),
        )
        requests.inc()
        durations.observe(duration, exemplar)
        if not polled:
            user_key = (info.user_id, endpoint)
            per_user = metrics.API_REQUESTS_PER_USER
            _cached(self._user_children, user_key, lambda: per_user.labels(*user_key)).inc()
        error_type = None
        if status >= 400:
            error_type = info.error_type or error_type_for_status(status)
            self.window.record(endpoint, error_type)
        if span.is_recording():
            span.update_name(f"{label_method} {endpoint}")
            span.set_attribute("http.route", endpoint)
            span.set_attribute("http.response.status_code", status)
            if error is not None:
                span.record_exception(error)
            if status >= 500 or error is not None:
                span.set_status(Status(StatusCode.ERROR, error_type or type(error).__name__))
            span.end()
        duration_ms = round(duration * 1000, 3)
        slow = duration_ms >= self.cfg.logging.slow_request_ms
        if polled and status < 400:
            level = logging.DEBUG  # probes and scrapes would drown the log at INFO
        elif status >= 500:
            level = logging.ERROR
        elif status >= 400 or slow:
            level = logging.WARNING
        else:
            level = logging.INFO
        if not _log.isEnabledFor(level):
            return
        ratio = self.cfg.logging.request_sample_ratio
        if level == logging.INFO and ratio < 1.0 and not _sampled_for_log(span_ctx.trace_id, ratio):
            return
        fields = {
            "trace_id": trace_hex,
            "span_id": format(span_ctx.span_id, "016x") if trace_hex is not None else None,
            "operation": "http_request",
            "method": method,
            "path": path,
            "endpoint": endpoint,
            "status": status,
            "duration_ms": duration_ms,
            "model_type": info.model_type,
            "task": info.task,
            "batch_size": info.batch_size,
            "memory_mb": process_memory_mb(),
            "user_id": info.user_id,
            "error_type": error_type,
            **info.extra,
        }
        message = f"{method} {path} {status} {duration_ms:.1f}ms"
        _log.handle(RequestLogRecord(_log.name, level, message, fields))
