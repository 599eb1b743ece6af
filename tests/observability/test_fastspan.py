"""FastSpan: the request path's spans, checked against what the SDK's own spans would export."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.fasttrace.spans import FastSpan
from mobile_multimodal.observability.tracing import (
    configure_tracing,
    fast_path_active,
    force_flush,
    get_tracer,
    stage,
    start_span,
)

REMOTE = trace.SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
)

pytestmark = pytest.mark.usefixtures("span_mode")


def test_a_fast_span_exports_like_an_sdk_span() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    caller = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    fast = start_span("POST /inference", caller, SpanKind.SERVER, {"url.path": "/inference", "gone": None})
    assert isinstance(fast, FastSpan) is fast_path_active()  # else the SDK's span: the same export
    fast.set_attribute("http.response.status_code", 200)
    fast.set_attribute("tags", ["a", "b"])
    fast.update_name("POST /inference!")
    fast.end()
    fast.set_attribute("late", 1)  # after end(): ignored, as by the SDK
    with get_tracer().start_as_current_span("sdk", context=caller, kind=SpanKind.SERVER) as sdk:
        sdk.set_attribute("url.path", "/inference")
    force_flush()
    got, ref = exporter.get_finished_spans()
    assert got.name == "POST /inference!" and got.kind == SpanKind.SERVER
    assert dict(got.attributes or {}) == {
        "url.path": "/inference",
        "http.response.status_code": 200,
        "tags": ("a", "b"),
    }
    assert got.parent == REMOTE and got.context.trace_id == REMOTE.trace_id
    assert got.resource == ref.resource and got.instrumentation_scope.name == "mobile_multimodal"
    assert got.start_time is not None and got.end_time is not None and got.start_time <= got.end_time
    # the OTLP encoder takes it as it takes the SDK's span: same fields, same flags
    ours, sdks = (encode_spans([s]).resource_spans[0].scope_spans[0].spans[0] for s in (got, ref))
    assert ours.parent_span_id == sdks.parent_span_id and ours.flags == sdks.flags
    assert ours.kind == sdks.kind and ours.trace_id == sdks.trace_id


def test_sdk_spans_opened_inside_a_stage_are_its_children() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    with stage("authentication") as auth, get_tracer("some.library").start_as_current_span("db query"):
        pass
    force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    db_parent = spans["db query"].parent
    assert db_parent is not None and db_parent.span_id == auth.get_span_context().span_id


def test_status_rules_follow_the_sdk() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    span = start_span("inference")
    span.set_status(StatusCode.ERROR, "boom")
    span.set_status(StatusCode.UNSET)  # never overrides
    span.record_exception(ValueError("bad"), {"extra": 1})
    span.end()
    span.end()  # a second end() exports nothing more
    force_flush()
    (got,) = exporter.get_finished_spans()
    assert got.status.status_code == StatusCode.ERROR and got.status.description == "boom"
    (event,) = got.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError" and event.attributes["extra"] == 1
    assert "ValueError: bad" in str(event.attributes["exception.stacktrace"])


def test_unsampled_roots_record_nothing_but_keep_ids() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(sampler="traceidratio", sample_ratio=0.0), "svc", exporter)
    root = start_span("GET /x", kind=SpanKind.SERVER)
    assert not root.is_recording() and root.get_span_context().is_valid
    token = otel_context.attach(trace.set_span_in_context(root))
    try:
        with stage("inference") as child:
            assert not child.is_recording()
            assert child.get_span_context().trace_id == root.get_span_context().trace_id
    finally:
        otel_context.detach(token)
    force_flush()
    assert exporter.get_finished_spans() == ()


def test_no_endpoint_still_gives_trace_ids() -> None:
    configure_tracing(TracingConfig(), "svc")  # no exporter: spans are recorded, then dropped
    with stage("inference") as span:
        assert span.is_recording() and span.get_span_context().is_valid


def test_links_are_exported() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    span = start_span("batch", links=[trace.Link(REMOTE, {"why": "batched with"})])
    span.add_link(REMOTE, {"n": 2})
    span.add_link(trace.INVALID_SPAN_CONTEXT)  # dropped, as by the SDK
    span.end()
    force_flush()
    (got,) = exporter.get_finished_spans()
    assert [dict(link.attributes or {}) for link in got.links] == [{"why": "batched with"}, {"n": 2}]
    assert all(link.context == REMOTE for link in got.links)
