r"""OpenTelemetry tracing: the provider, OTLP export, and the ``stage()`` helper for the guide's stages.

The guide's inference trace is ``model_inference`` with children authentication →
model_loading → preprocessing → inference → postprocessing → response; the export trace is
``mobile_export`` with model_validation → platform_selection → quantization → export →
validation → storage. Serving and export code open them with :func:`stage`, or, for the short
request-path stages that open no spans themselves, with :func:`leaf_stage`: exported the same
way, but never the current span, which makes them about a third of the cost.

The request path's own spans (the server span, ``model_inference`` and its stages) are
:class:`~mobile_multimodal.observability.fastspan.FastSpan`\ s opened with :func:`start_span`:
the same sampler, span processor, resource and OTLP export as the SDK's, at a fraction of the
SDK span's cost (see that module). A process-wide :class:`_SwitchableTracerProvider` is
registered with the OpenTelemetry API once; :func:`configure_tracing` swaps the SDK provider
behind it, so libraries that call ``trace.get_tracer()`` (database instrumentation, for
instance) follow reconfiguration too, and nest under the request's spans.

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
from opentelemetry.context.context import Context
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
from opentelemetry.trace.propagation import _SPAN_KEY  # the key trace.set_span_in_context() sets
from opentelemetry.util.types import AttributeValue

from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.export_process import SpanExportProcess
from mobile_multimodal.observability.fastspan import (
    CONTEXT_VAR,
    FastSpan,
    LeafSpan,
    SpanRecorder,
    record_failure,
)
from mobile_multimodal.observability.fastspan import _current_context as current_context
from mobile_multimodal.observability.identity import instance_id, service_version

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


_PROVIDER = _SwitchableTracerProvider()
_registered = False
_sdk_provider: TracerProvider | None = None
_recorder: SpanRecorder | None = None
_paused: SpanRecorder | None = None  # the recorder set_recording(False) put aside


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


def build_exporter(cfg: TracingConfig) -> SpanExporter | None:
    """An OTLP exporter for ``cfg.endpoint`` over ``cfg.protocol``; None when no endpoint is set.

    Headers, timeout, compression and certificates come from the standard OTEL_EXPORTER_OTLP_*
    variables, which the exporters read themselves.
    """
    if not cfg.endpoint:
        return None
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=cfg.endpoint, insecure=cfg.endpoint.startswith("http://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=cfg.endpoint)


def configure_tracing(
    cfg: TracingConfig, service_name: str, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install a tracer provider per ``cfg`` (or none when tracing is disabled) and return it.

    Spans go to ``exporter`` when one is given (tests pass an in-memory one), else to the OTLP
    endpoint of ``cfg``: from a child process (:class:`SpanExportProcess`) when
    ``cfg.export_process``, else from the SDK's exporter thread. A previous provider set by this
    function is flushed and shut down first.
    """
    global _sdk_provider, _recorder
    _register_global()
    shutdown_tracing()
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
    scope = InstrumentationScope(INSTRUMENTATION_NAME, service_version())
    _recorder = SpanRecorder(sampler, processor, resource, scope, provider.id_generator)
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


class _Stage:
    """The context manager :func:`stage` returns (a class: cheaper than a generator per use)."""

    __slots__ = ("_attributes", "_name", "_parent", "_span", "_token")

    def __init__(
        self, name: str, attributes: Mapping[str, AttributeValue] | None, parent: otel_context.Context | None
    ) -> None:
        self._name, self._attributes, self._parent = name, attributes, parent

    def __enter__(self) -> Span:
        # start_span(), trace.set_span_in_context() and context.attach(), with the context looked
        # up once and set without the API's call layers
        base = self._parent if self._parent is not None else current_context()
        span = self._span = start_span(self._name, base, SpanKind.INTERNAL, self._attributes)
        values = dict(base)
        values[_SPAN_KEY] = span
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

    Under a request-path span it is a :class:`~mobile_multimodal.observability.fastspan.LeafSpan`,
    recorded on that span and exported with it: 0.8 µs against 2.2 µs for ``stage()`` (no
    context switch, no span of its own to queue). Under any other span it is an ordinary stage.
    """
    if attrs:
        attributes = {**(attributes or {}), **attrs}
    enclosing = (parent if parent is not None else current_context()).get(_SPAN_KEY)
    if type(enclosing) is FastSpan and enclosing._end is None:
        return LeafSpan(enclosing, name, attributes)
    return _Stage(name, attributes, parent)


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
