r"""OpenTelemetry tracing: the provider, OTLP export, and the ``stage()`` helper for the guide's stages.

The guide's inference trace is ``model_inference`` with children authentication →
model_loading → preprocessing → inference → postprocessing → response; the export trace is
``mobile_export`` with model_validation → platform_selection → quantization → export →
validation → storage. Serving and export code open them with :func:`stage`, or, for the short
request-path stages that open no spans themselves, with :func:`leaf_stage`: exported the same
way, but never the current span, which makes them cheaper (benchmarks/telemetry/results.md).

The request path's own spans (the server span, ``model_inference`` and its stages) are opened
with :func:`start_span`. With ``tracing.fast_path`` on (the default) they are the fast path's
:class:`~mobile_multimodal.observability.fasttrace.spans.FastSpan`\ s: the same sampler, span
processor, resource and OTLP export as the SDK's, at a fraction of the SDK span's cost (see
the ``fasttrace`` package). Off, or when the fast path's self-check finds that an OpenTelemetry
internal it relies on has moved (one warning), they are the SDK's own spans. A process-wide
:class:`_SwitchableTracerProvider` is registered with the OpenTelemetry API once;
:func:`configure_tracing` swaps the SDK provider behind it, so libraries that call
``trace.get_tracer()`` (database instrumentation, for instance) follow reconfiguration too,
and nest under the request's spans.

Example::

    from mobile_multimodal.observability.tracing import stage
    with stage("model_inference", {"model.type": "multimodal", "model.task": "captioning"}) as span:
        with stage("preprocessing", {"input.size": len(image_bytes)}):
            ...
        span.set_attribute("output.size", len(caption))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.fasttrace.export_process import SpanExportProcess
from mobile_multimodal.observability.fasttrace.otel_internals import SPAN_KEY, current_context, self_check
from mobile_multimodal.observability.fasttrace.spans import FastSpan, LeafSpan, SpanRecorder, record_failure
from mobile_multimodal.observability.fasttrace.stages import FastStage
from mobile_multimodal.observability.identity import instance_id, service_version
from mobile_multimodal.observability.otlp_exporter import build_exporter

INSTRUMENTATION_NAME = "mobile_multimodal"
_log = logging.getLogger(__name__)


class _SwitchableTracer(trace.Tracer):
    """Delegates to the tracer of whatever provider is current, looked up per span."""

    def __init__(self, owner: _SwitchableTracerProvider, name: str, version: str | None) -> None:
        self._owner, self._name, self._version = owner, name, version

    def _current(self) -> trace.Tracer:
        return self._owner.delegate_tracer(self._name, self._version)

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        return self._current().start_span(*args, **kwargs)

    # The API types this with a private context-manager class; delegating keeps its behaviour.
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._current().start_as_current_span(*args, **kwargs)


class _SwitchableTracerProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.delegate: trace.TracerProvider = trace.NoOpTracerProvider()
        self._tracers: dict[tuple[str, str | None], trace.Tracer] = {}

    def delegate_tracer(self, name: str, version: str | None) -> trace.Tracer:
        tracer = self._tracers.get((name, version))
        if tracer is None:
            tracer = self.delegate.get_tracer(name, version)
            self._tracers[(name, version)] = tracer
        return tracer

    def swap(self, delegate: trace.TracerProvider) -> None:
        self.delegate = delegate
        self._tracers = {}

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> trace.Tracer:
        version = args[0] if args else kwargs.get("instrumenting_library_version")
        return _SwitchableTracer(self, instrumenting_module_name, version)


class _SdkSpans:
    """The request path's spans when the fast path is off: the SDK tracer's own."""

    def __init__(self, tracer: trace.Tracer, processor: SpanProcessor | None) -> None:
        self.tracer = tracer
        self.processor = processor

    def start(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttributeValue] | None = None,
        links: Sequence[trace.Link] = (),
    ) -> Span:
        if attributes:  # as the fast path does (the SDK would keep a None given at start)
            attributes = {k: v for k, v in attributes.items() if v is not None}
        return self.tracer.start_span(name, context, kind, attributes, links)


_PROVIDER = _SwitchableTracerProvider()
_registered = False
_sdk_provider: TracerProvider | None = None
_recorder: SpanRecorder | _SdkSpans | None = None
_paused: SpanRecorder | _SdkSpans | None = None  # the recorder set_recording(False) put aside
# Whether stages use the fast path (fasttrace); until configure_tracing decides, whenever the
# OpenTelemetry internals it relies on are where it expects them.
_fast = not self_check()


def fast_path_active() -> bool:
    """Whether request-path spans and stages are the fast path's (else the SDK's own)."""
    return _fast


def _register_global() -> None:
    global _registered
    if not _registered:
        trace.set_tracer_provider(_PROVIDER)
        _registered = True


def build_sampler(cfg: TracingConfig) -> Sampler:
    """The sampler named by ``cfg.sampler`` (the OTEL_TRACES_SAMPLER names) with ``cfg.sample_ratio``."""
    ratio = TraceIdRatioBased(cfg.sample_ratio)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[cfg.sampler]


def configure_tracing(
    cfg: TracingConfig, service_name: str, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install a tracer provider per ``cfg`` (or none when tracing is disabled) and return it.

    Spans go to ``exporter`` when one is given (tests pass an in-memory one), else to the OTLP
    endpoint of ``cfg``: from a child process (:class:`SpanExportProcess`) when
    ``cfg.export_process``, else from the SDK's exporter thread. Request-path spans are the
    fast path's when ``cfg.fast_path`` and its self-check pass, else the SDK's (a failed
    self-check logs one warning). A previous provider set by this function is flushed and shut
    down first.
    """
    global _sdk_provider, _recorder, _fast
    _register_global()
    shutdown_tracing()
    problems = self_check() if cfg.fast_path else []
    if problems:
        _log.warning(
            "tracing falls back to the OpenTelemetry SDK's own spans (tracing.fast_path is on, but "
            "the fast path's self-check failed with opentelemetry-sdk %s: %s)",
            _sdk_version(),
            "; ".join(problems),
        )
    _fast = cfg.fast_path and not problems
    if not cfg.enabled:
        return None
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.version": service_version(),
            "service.instance.id": instance_id(),
        }
    )
    sampler = build_sampler(cfg)
    provider = TracerProvider(sampler=sampler, resource=resource)
    processor: SpanProcessor | None = None
    if exporter is not None:
        processor = BatchSpanProcessor(exporter)
    elif cfg.endpoint and cfg.export_process:
        processor = SpanExportProcess(cfg, resource)
    else:
        exporter = build_exporter(cfg)
        processor = BatchSpanProcessor(exporter) if exporter is not None else None
    if processor is not None:
        provider.add_span_processor(processor)
    if _fast:
        scope = InstrumentationScope(INSTRUMENTATION_NAME, service_version())
        _recorder = SpanRecorder(sampler, processor, resource, scope, provider.id_generator)
    else:
        _recorder = _SdkSpans(provider.get_tracer(INSTRUMENTATION_NAME, service_version()), processor)
    _sdk_provider = provider
    _PROVIDER.swap(provider)
    return provider


def shutdown_tracing() -> None:
    """Export what is buffered and stop the provider; spans after this are non-recording."""
    global _sdk_provider, _recorder, _paused
    _recorder = _paused = None
    if _sdk_provider is not None:
        # shutdown() exports what is queued; a force_flush() first would double the wait (the
        # exporter's retries, ~7 s) when the collector is down.
        _sdk_provider.shutdown()
        _sdk_provider = None
    _PROVIDER.swap(trace.NoOpTracerProvider())


def set_recording(on: bool) -> None:
    """Pause (``False``) or resume (``True``) recording. Paused, every span is non-recording, as
    with tracing off, while the provider and its span export process stay up: the telemetry
    benchmark switches arms this way, many times a second, without restarting them."""
    global _recorder, _paused
    if on and _paused is not None:
        _recorder, _paused = _paused, None
    elif not on and _recorder is not None:
        _recorder, _paused = None, _recorder


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export buffered spans now (tests, shutdown). True when nothing was left behind."""
    return _sdk_provider.force_flush(timeout_ms) if _sdk_provider is not None else True


def get_tracer(name: str = INSTRUMENTATION_NAME) -> trace.Tracer:
    _register_global()
    return _PROVIDER.get_tracer(name, service_version())


def start_span(
    name: str,
    context: otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Sequence[trace.Link] = (),
) -> Span:
    """Open a request-path span (not made current; end it yourself). A child of the span active
    in ``context`` (default: the current context); non-recording when tracing is off."""
    recorder = _recorder
    if recorder is None:
        return trace.NonRecordingSpan(trace.get_current_span(context).get_span_context())
    return recorder.start(name, context, kind, attributes, links)


def _sdk_version() -> str:
    from importlib.metadata import version

    return version("opentelemetry-sdk")


class _Stage:
    """The context manager :func:`stage` returns with the fast path off: the API's own calls."""

    __slots__ = ("_attributes", "_name", "_parent", "_span", "_token")

    def __init__(
        self, name: str, attributes: Mapping[str, AttributeValue] | None, parent: otel_context.Context | None
    ) -> None:
        self._name, self._attributes, self._parent = name, attributes, parent

    def __enter__(self) -> Span:
        base = self._parent if self._parent is not None else otel_context.get_current()
        span = self._span = start_span(self._name, base, SpanKind.INTERNAL, self._attributes)
        self._token = otel_context.attach(trace.set_span_in_context(span, base))
        return span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        if exc is not None:
            record_failure(span, exc)
        otel_context.detach(self._token)
        span.end()


def stage(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    parent: otel_context.Context | None = None,
    /,
    **attrs: AttributeValue,
) -> contextlib.AbstractContextManager[Span]:
    """A child span of the span active in ``parent`` (default: the current context) for one
    stage of a trace, current while the block runs; an exception marks it as an error.

    Dotted attribute names (``model.type``) go in the mapping; plain names may be keywords.
    """
    if attrs:
        attributes = {**(attributes or {}), **attrs}
    if _fast:
        return FastStage(start_span, name, attributes, parent)
    return _Stage(name, attributes, parent)


def leaf_stage(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    parent: otel_context.Context | None = None,
    /,
    **attrs: AttributeValue,
) -> contextlib.AbstractContextManager[Span]:
    """A stage that is a leaf of the trace: a child span of the span active in ``parent``
    (default: the current context), timed and exported like :func:`stage`, but never made
    current. Log lines written inside it carry the enclosing span's id, and spans opened inside
    it (a database query, say) are the enclosing span's children, so use it only for stages
    that open none.

    Under a request-path span of the fast path it is a
    :class:`~mobile_multimodal.observability.fasttrace.spans.LeafSpan`, recorded on that span and
    exported with it (no context switch, no span of its own to queue). Under any other span, and
    with the fast path off, it is an ordinary stage.
    """
    if attrs:
        attributes = {**(attributes or {}), **attrs}
    if not _fast:
        return _Stage(name, attributes, parent)
    enclosing = (parent if parent is not None else current_context()).get(SPAN_KEY)
    if type(enclosing) is FastSpan and enclosing._end is None:
        return LeafSpan(enclosing, name, attributes)
    return FastStage(start_span, name, attributes, parent)


def current_ids() -> tuple[str | None, str | None]:
    """(trace_id, span_id) of the active span as lower-case hex, or (None, None) outside one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str | None:
    """The active trace id as 32 hex digits (what responses and error bodies carry), else None."""
    return current_ids()[0]


def trace_exemplar() -> dict[str, str] | None:
    """``{"trace_id": ...}`` for ``Histogram.observe(v, exemplar=...)`` when the span is sampled.

    Only sampled traces are worth linking to: an exemplar pointing at a trace the backend never
    received is a dead link.
    """
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}


def set_attributes(span: Span, attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set the attributes whose value is not None (OpenTelemetry refuses None values)."""
    if span.is_recording():
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)
