"""Request-path spans that cost a fraction of the SDK's, exported through the SDK unchanged.

Every inference request opens eight spans (the server span, ``model_inference`` and its six
stages). The SDK's ``Span`` gives each a lock, bounded event/link/attribute containers and a
processor ``on_start`` call; what that costs against a FastSpan, per span and per request, is
measured in ``benchmarks/telemetry/`` (results in ``benchmarks/telemetry/results.md``).
:class:`FastSpan` keeps a plain dict of attributes and a list of events. On ``end()`` it goes
as it is to :class:`~mobile_multimodal.observability.fasttrace.export_process.SpanExportProcess`, which
reads it in its own thread, or as an ordinary :class:`~opentelemetry.sdk.trace.ReadableSpan` to
any other SDK span processor; either way the OTLP encoding, the resource and the
instrumentation scope are the SDK's. It is a real ``opentelemetry.trace.Span``: put in the
context, it parents spans that libraries open with the SDK tracer (the database
instrumentation, for instance).

Stages that open no spans of their own are cheaper still as :class:`LeafSpan`\\ s: recorded on
their parent FastSpan and exported with it as its children, without a context switch or a span
queued of their own. The inference
stages are leaves, except ``authentication`` when API keys are required: the key lookup's
database spans belong under it.

Sampling follows the configured sampler: a span whose parent is not a recording
:class:`FastSpan` of this process asks the sampler, as the SDK does; a child of a recording
one is recorded without asking, which is what every sampler we configure (``always_*``,
``traceidratio`` on the same trace id, ``parentbased_*``) would answer.

Example::

    recorder = SpanRecorder(sampler, processor, resource, scope)
    span = recorder.start("model_inference", parent_context, SpanKind.INTERNAL, {"model.task": "ocr"})
    ...
    span.end()
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from mobile_multimodal.observability.fasttrace.otel_internals import SPAN_KEY, child_context, current_context

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)


def record_failure(span: trace.Span, exc: BaseException) -> None:
    """Mark a recording span as failed by ``exc``: an exception event and an ERROR status naming
    it, as the SDK's ``start_as_current_span`` does when an exception leaves its block."""
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class _Recording:
    """What FastSpan and LeafSpan share: attributes, events, name and status, until ``end()``,
    under the SDK's rules. (No ``__slots__`` here: ``trace.Span`` has none, so the spans keep a
    ``__dict__`` whatever this class declares; their own slots make the hot fields fast.)"""

    _attributes: dict[str, AttributeValue]
    _events: list[Event] | None
    _name: str
    _status: Status
    _end: int | None

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end is None and value is not None:  # the SDK drops None values too
            self._attributes[key] = tuple(value) if isinstance(value, list) else value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        timestamp: int | None = None,
    ) -> None:
        if self._end is None:
            event = Event(name, attributes, timestamp or time.time_ns())
            if self._events is None:
                self._events = [event]
            else:
                self._events.append(event)

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end is not None:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        # as in the SDK: OK is final, and UNSET never overrides what was set
        if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
            return
        self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, AttributeValue] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # the attributes of the semantic conventions for exceptions, as the SDK records them
        event_attributes: dict[str, AttributeValue] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event_attributes.update(attributes)
        self.add_event("exception", event_attributes, timestamp)


class FastSpan(_Recording, trace.Span):
    """A recording span: a name, a context, a dict of attributes, events and a status."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_kind",
        "_leaves",
        "_links",
        "_name",
        "_parent",
        "_recorder",
        "_sampled",
        "_start",
        "_status",
    )  # fmt: skip

    def __init__(
        self,
        recorder: SpanRecorder,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue] | None,
        links: Sequence[Link] = (),
        sampled: bool = True,
    ) -> None:
        self._recorder = recorder
        self._name = name
        self._context = context
        self._sampled = sampled  # context.trace_flags.sampled, known by whoever made the context
        self._parent = parent
        self._kind = kind
        self._attributes: dict[str, AttributeValue] = (
            {k: v for k, v in attributes.items() if v is not None} if attributes else {}
        )
        self._events: list[Event] | None = None  # made on first use: most spans have none
        self._links: list[Link] | None = list(links) if links else None
        self._status = _UNSET
        self._start = time.time_ns()
        self._end: int | None = None
        self._leaves: list[LeafSpan] | None = None  # ended leaf stages, exported with this span

    # ---- the Span API ----------------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context

    def add_link(self, context: SpanContext, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        if self._end is None and context.is_valid:  # the SDK drops links to invalid contexts too
            link = Link(context, attributes)
            if self._links is None:
                self._links = [link]
            else:
                self._links.append(link)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time or time.time_ns()
        self._recorder.finish(self)

    def readables(self) -> list[ReadableSpan]:
        """This span and its leaf stages as SDK spans, for span processors other than ours."""
        spans = [self.readable()]
        for leaf in self._leaves or ():
            spans.append(leaf.readable())
        return spans

    def readable(self) -> ReadableSpan:
        r = self._recorder
        return ReadableSpan(
            name=self._name,
            context=self._context,
            parent=self._parent,
            resource=r.resource,
            attributes=self._attributes,
            events=tuple(self._events or ()),
            links=tuple(self._links or ()),
            kind=self._kind,
            status=self._status,
            start_time=self._start,
            end_time=self._end,
            instrumentation_scope=r.scope,
        )


class LeafSpan(_Recording, trace.Span):
    """A stage recorded on its parent :class:`FastSpan` and exported with it, as its child span.

    It is a leaf of the trace: it never becomes the current span, so log lines written and spans
    opened while it runs belong to the parent. That is what makes it cheap: no context switch,
    no context object, and no span queued of its own. Use it for short stages of the request path that open no
    spans themselves; :func:`~mobile_multimodal.observability.tracing.leaf_stage` makes them.
    It is its own context manager: an exception leaving the block is recorded and marks it as
    an error, as ``stage()`` does.
    """

    __slots__ = ("_attributes", "_end", "_events", "_name", "_parent", "_span_id", "_start", "_status")

    def __init__(self, parent: FastSpan, name: str, attributes: Mapping[str, AttributeValue] | None) -> None:
        self._parent = parent
        self._name = name
        self._attributes: dict[str, AttributeValue] = (
            {k: v for k, v in attributes.items() if v is not None} if attributes else {}
        )
        self._events: list[Event] | None = None
        self._status = _UNSET
        self._span_id = parent._recorder._new_span_id()
        self._start = time.time_ns()
        self._end: int | None = None

    def __enter__(self) -> LeafSpan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            record_failure(self, exc)
        self.end()

    def get_span_context(self) -> SpanContext:
        return child_context(self._parent._context, self._span_id)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time or time.time_ns()
        parent = self._parent
        if parent._end is None:  # the usual case: exported when the parent ends
            if parent._leaves is None:
                parent._leaves = [self]
            else:
                parent._leaves.append(self)
        elif parent._sampled:  # the parent is gone already: export this one on its own
            processor = parent._recorder.processor
            if processor is not None:
                processor.on_end(self.readable())

    def readable(self) -> ReadableSpan:
        parent = self._parent
        r = parent._recorder
        return ReadableSpan(
            name=self._name,
            context=self.get_span_context(),
            parent=parent._context,
            resource=r.resource,
            attributes=self._attributes,
            events=tuple(self._events or ()),
            links=(),
            kind=SpanKind.INTERNAL,
            status=self._status,
            start_time=self._start,
            end_time=self._end,
            instrumentation_scope=r.scope,
        )


class SpanRecorder:
    """Starts :class:`FastSpan`\\ s under one sampler and ends them into one span processor."""

    def __init__(
        self,
        sampler: Sampler,
        processor: SpanProcessor | None,
        resource: Resource,
        scope: InstrumentationScope,
        id_generator: IdGenerator | None = None,
    ) -> None:
        self.sampler = sampler
        self.processor = processor
        self.resource = resource
        self.scope = scope
        self.ids = id_generator or RandomIdGenerator()
        # the SDK's RandomIdGenerator.generate_span_id, without its call layers, when it is the one
        default_ids = type(self.ids) is RandomIdGenerator
        self._new_span_id = _random_span_id if default_ids else self.ids.generate_span_id
        # where a finished, sampled span goes: a processor that reads FastSpans itself
        # (SpanExportProcess.submit) is spared the ReadableSpan copy and on_end's checks
        self._sink: Callable[[FastSpan], None] | None = None
        if processor is not None:
            submit = getattr(processor, "submit", None)
            if getattr(processor, "takes_fast_spans", False) and callable(submit):
                self._sink = submit
            else:

                def to_processor(span: FastSpan) -> None:
                    for readable in span.readables():
                        processor.on_end(readable)

                self._sink = to_processor

    def start(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttributeValue] | None = None,
        links: Sequence[Link] = (),
    ) -> trace.Span:
        # trace.get_current_span(context), without its three nested calls
        parent_span = (context if context is not None else current_context()).get(SPAN_KEY)
        if type(parent_span) is FastSpan and parent_span._end is None:
            parent = parent_span._context
            span_ctx = child_context(parent, self._new_span_id())
            return FastSpan(self, name, span_ctx, parent, kind, attributes, links, parent_span._sampled)
        if not isinstance(parent_span, trace.Span):
            parent_span = trace.INVALID_SPAN
        parent = parent_span.get_span_context()
        trace_id = parent.trace_id if parent.is_valid else self.ids.generate_trace_id()
        result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        sampled = result.decision.is_sampled()
        span_ctx = SpanContext(
            trace_id, self._new_span_id(), False, _SAMPLED if sampled else _NOT_SAMPLED, result.trace_state
        )
        if not result.decision.is_recording():
            return trace.NonRecordingSpan(span_ctx)
        # as in the SDK, the span takes the attributes the sampler returns (ours return those given)
        parent_ctx = parent if parent.is_valid else None
        return FastSpan(self, name, span_ctx, parent_ctx, kind, result.attributes, links, sampled)

    def finish(self, span: FastSpan) -> None:
        sink = self._sink
        if sink is not None and span._sampled:
            sink(span)


def _random_span_id() -> int:
    """A random non-zero 64-bit span id, as RandomIdGenerator makes them."""
    return random.getrandbits(64) or 1
