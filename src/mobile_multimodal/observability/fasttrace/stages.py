"""The fast path's stage context manager: a child span made current without the API's layers.

``tracing.stage()`` returns a :class:`FastStage` while the fast path is on: it looks the current
context up once, puts the new span in a copy under the API's span key and sets the runtime
context's ContextVar directly (``otel_internals``), which is what ``trace.set_span_in_context``
and ``context.attach`` do through several calls. With the fast path off ``tracing.py`` uses the
API's own functions instead.

Example::

    with FastStage(tracing.start_span, "preprocessing", {"input.size": 1024}, None) as span:
        ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from mobile_multimodal.observability.fasttrace.otel_internals import CONTEXT_VAR, SPAN_KEY, current_context
from mobile_multimodal.observability.fasttrace.spans import record_failure

_log = logging.getLogger("mobile_multimodal.tracing")

# tracing.start_span: (name, context, kind, attributes) -> a span, recording or not
StartSpan = Callable[[str, Context | None, SpanKind, Mapping[str, AttributeValue] | None], Span]


class FastStage:
    """A child span of the span active in ``parent`` (default: the current context), current
    while the block runs; an exception leaving the block marks it as an error. (A class, not a
    generator: cheaper per use.)"""

    __slots__ = ("_attributes", "_name", "_parent", "_span", "_start", "_token")

    def __init__(
        self,
        start: StartSpan,
        name: str,
        attributes: Mapping[str, AttributeValue] | None,
        parent: Context | None,
    ) -> None:
        self._start, self._name, self._attributes, self._parent = start, name, attributes, parent

    def __enter__(self) -> Span:
        base = self._parent if self._parent is not None else current_context()
        span = self._span = self._start(self._name, base, SpanKind.INTERNAL, self._attributes)
        values = dict(base)
        values[SPAN_KEY] = span
        context = Context(values)
        self._token = CONTEXT_VAR.set(context) if CONTEXT_VAR is not None else otel_context.attach(context)
        return span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        if exc is not None:
            record_failure(span, exc)
        if CONTEXT_VAR is None:
            otel_context.detach(self._token)
        else:
            try:
                CONTEXT_VAR.reset(self._token)
            except ValueError:  # exited in another context than entered; the API logs it too
                _log.exception("Failed to detach context")
        span.end()
