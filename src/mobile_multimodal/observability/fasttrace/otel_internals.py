"""The OpenTelemetry internals the fast path relies on, in one place, and a check that they hold.

The fast path reads and writes what the OpenTelemetry API keeps private:

- ``opentelemetry.trace.propagation._SPAN_KEY``: the context key under which
  ``trace.set_span_in_context`` stores the current span and ``trace.get_current_span`` reads it;
- ``opentelemetry.context._RUNTIME_CONTEXT._current_context``: the ``ContextVar`` behind the
  default (contextvars) runtime context, so the request path gets and sets the current context
  without the API's call layers (under another runtime context, ``OTEL_PYTHON_CONTEXT``, the
  API's own functions are used instead);
- the ``SpanContext`` tuple layout ``(trace_id, span_id, is_remote, trace_flags, trace_state,
  is_valid)``, built without the constructor's checks for a child of a valid parent;
- the ``ReadableSpan`` and ``Event`` constructors' keywords, with which finished fast spans are
  handed to any SDK span processor.

:func:`self_check` exercises each of them against the public API that stands behind it and
returns what no longer holds; ``tracing.configure_tracing`` then falls back to the SDK's own
spans with one warning. pyproject.toml pins OpenTelemetry to the minor range this was checked
against.

Example::

    problems = self_check()       # [] when the fast path may run
    SPAN_KEY, CONTEXT_VAR, current_context(), child_context(parent, span_id)
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace import propagation as _propagation

# What the checks below verify; read once here, with defaults, so a renamed name fails the
# self-check instead of the import.
SPAN_KEY: str = getattr(_propagation, "_SPAN_KEY", "current-span")


def _runtime_context_var() -> contextvars.ContextVar[Context] | None:
    """The ContextVar behind the default runtime context; None under another runtime context."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is ContextVarsRuntimeContext:
        var = getattr(runtime, "_current_context", None)
        if isinstance(var, contextvars.ContextVar):
            return var
    return None


CONTEXT_VAR = _runtime_context_var()
current_context: Callable[[], Context] = (
    CONTEXT_VAR.get if CONTEXT_VAR is not None else otel_context.get_current
)


def child_context(parent: SpanContext, span_id: int) -> SpanContext:
    """``SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)``
    for a valid parent: the tuple the constructor builds, read and built without its property
    calls and validity checks."""
    return tuple.__new__(SpanContext, (parent[0], span_id, False, parent[3], parent[4], True))


def _check_span_key() -> str | None:
    key = getattr(_propagation, "_SPAN_KEY", None)
    if not isinstance(key, str):
        return "opentelemetry.trace.propagation._SPAN_KEY is gone"
    span = trace.NonRecordingSpan(SpanContext(1, 2, False))
    ctx = trace.set_span_in_context(span)
    read_back = trace.get_current_span(Context({key: span}))
    if key != SPAN_KEY or ctx.get(key) is not span or read_back is not span:
        return "trace.set_span_in_context no longer stores the span under _SPAN_KEY"
    return None


def _check_runtime_context() -> str | None:
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if runtime is None:
        return "opentelemetry.context._RUNTIME_CONTEXT is gone"
    if type(runtime) is not ContextVarsRuntimeContext:
        return None  # another runtime context (OTEL_PYTHON_CONTEXT): the fast path uses the API
    var = getattr(runtime, "_current_context", None)
    if not isinstance(var, contextvars.ContextVar) or var is not CONTEXT_VAR:
        return "the contextvars runtime context no longer keeps its ContextVar in _current_context"
    probe = Context({"fasttrace-self-check": True})
    token = otel_context.attach(probe)
    try:
        if var.get() is not probe:
            return "context.attach() no longer sets the runtime context's _current_context"
    finally:
        otel_context.detach(token)
    return None


def _check_span_context_layout() -> str | None:
    parent = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1))
    try:
        fast = child_context(parent, 0x1234)
    except Exception as exc:  # a SpanContext that is no longer a tuple
        return f"SpanContext can no longer be built as a tuple ({exc})"
    ref = SpanContext(parent.trace_id, 0x1234, False, parent.trace_flags, parent.trace_state)
    fields = ("trace_id", "span_id", "is_remote", "trace_flags", "trace_state", "is_valid")
    if len(fast) != len(ref) or any(getattr(fast, f, None) != getattr(ref, f) for f in fields):
        return "SpanContext's tuple layout changed"
    return None


def _check_readable_span() -> str | None:
    ctx = SpanContext(1, 2, False, TraceFlags(1))
    try:
        span = ReadableSpan(
            name="check",
            context=ctx,
            parent=None,
            resource=Resource.get_empty(),
            attributes={"a": 1},
            events=(Event("e", {"b": 2}, 1),),
            links=(),
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode.UNSET),
            start_time=1,
            end_time=2,
            instrumentation_scope=None,
        )
    except TypeError as exc:
        return f"ReadableSpan no longer takes the fast path's keywords ({exc})"
    if span.get_span_context() != ctx or span.events[0].timestamp != 1:
        return "ReadableSpan no longer keeps what it is given"
    return None


def self_check() -> list[str]:
    """What the fast path relies on and no longer holds (empty: it may run)."""
    checks = (_check_span_key, _check_runtime_context, _check_span_context_layout, _check_readable_span)
    problems = []
    for check in checks:
        try:
            problem = check()
        except Exception as exc:  # an internal that changed shape in a way we did not foresee
            problem = f"{check.__name__}: {type(exc).__name__}: {exc}"
        if problem:
            problems.append(problem)
    return problems
