from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.tracing import (
    configure_tracing,
    current_ids,
    current_trace_id,
    force_flush,
    get_tracer,
    set_recording,
    shutdown_tracing,
    stage,
    trace_exemplar,
)

INFERENCE_STAGES = (
    "authentication",
    "model_loading",
    "preprocessing",
    "inference",
    "postprocessing",
    "response",
)

pytestmark = pytest.mark.usefixtures("span_mode")


def test_stages_nest_under_model_inference_with_attributes() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "mobile-multimodal-llm", exporter)
    attrs: dict[str, str | int] = {
        "model.type": "multimodal",
        "model.task": "captioning",
        "model.quantization": "int2",
        "input.size": 1234,
    }
    with stage("model_inference", attrs) as root:
        for name in INFERENCE_STAGES:
            with stage(name, batch_size=1):
                pass
        root.set_attribute("output.size", 17)
    force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"model_inference", *INFERENCE_STAGES}
    parent = spans["model_inference"]
    for name in INFERENCE_STAGES:
        stage_parent = spans[name].parent
        assert stage_parent is not None and stage_parent.span_id == parent.context.span_id
        assert spans[name].attributes == {"batch_size": 1}
    assert dict(parent.attributes or {}) == {**attrs, "output.size": 17}
    # in the guide's order
    starts = [spans[n].start_time or 0 for n in INFERENCE_STAGES]
    assert starts == sorted(starts)
    assert parent.resource.attributes["service.name"] == "mobile-multimodal-llm"


def test_an_exception_marks_the_stage_as_an_error_and_propagates() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    with pytest.raises(RuntimeError), stage("inference"):
        raise RuntimeError("out of memory")
    force_flush()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.events[0].name == "exception"
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.message"] == "out of memory"


def test_ratio_zero_samples_nothing_and_leaves_no_exemplar() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(sampler="traceidratio", sample_ratio=0.0), "svc", exporter)
    with stage("model_inference"):
        assert current_trace_id() is not None  # ids still exist: logs and responses can quote them
        assert trace_exemplar() is None  # but nothing links to a trace that was never exported
    force_flush()
    assert exporter.get_finished_spans() == ()


def test_exemplar_carries_the_sampled_trace_id() -> None:
    configure_tracing(TracingConfig(), "svc", InMemorySpanExporter())
    with stage("inference"):
        trace_id, span_id = current_ids()
        assert trace_exemplar() == {"trace_id": trace_id}
        assert trace_id is not None and len(trace_id) == 32 and span_id is not None and len(span_id) == 16
    assert current_ids() == (None, None)


def test_parent_based_sampler_follows_the_callers_decision() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(sampler="parentbased_traceidratio", sample_ratio=0.0), "svc", exporter)
    tracer = get_tracer()
    remote = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    caller = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    with tracer.start_as_current_span("server", context=caller), stage("inference"):
        pass
    force_flush()
    assert {s.name for s in exporter.get_finished_spans()} == {"server", "inference"}


def test_disabled_tracing_records_nothing() -> None:
    assert configure_tracing(TracingConfig(enabled=False), "svc") is None
    with stage("inference") as span:
        assert not span.is_recording()
        assert current_trace_id() is None


def test_global_api_follows_reconfiguration() -> None:
    # Libraries (database instrumentation) get their tracer once from the global API.
    library_tracer = trace.get_tracer("some.library")
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", first)
    with library_tracer.start_as_current_span("query"):
        pass
    configure_tracing(TracingConfig(), "svc", second)
    with library_tracer.start_as_current_span("query"):
        pass
    force_flush()
    assert len(first.get_finished_spans()) == 1
    assert len(second.get_finished_spans()) == 1


def test_recording_can_be_paused_without_stopping_export() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(sampler="always_on"), "svc", exporter)
    with stage("kept"):
        pass
    set_recording(False)
    with stage("paused") as span:
        assert not span.is_recording()
    set_recording(False)  # idempotent
    set_recording(True)
    set_recording(True)
    with stage("kept again"):
        pass
    assert force_flush()
    assert [s.name for s in exporter.get_finished_spans()] == ["kept", "kept again"]
    set_recording(False)
    shutdown_tracing()
    set_recording(True)  # nothing to resume after a shutdown
    with stage("after shutdown") as span:
        assert not span.is_recording()
