"""leaf_stage(): request-path stages recorded on their parent span, exported as its children."""

from __future__ import annotations

import logging
import pickle

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode
from tests.integration.otlp_receiver import OtlpReceiver

from mobile_multimodal.observability import tracing
from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.fasttrace.export_process import (
    SpanExportProcess,
    from_record,
    to_records,
)
from mobile_multimodal.observability.fasttrace.spans import FastSpan, LeafSpan, SpanRecorder
from mobile_multimodal.observability.logging import JsonFormatter
from mobile_multimodal.observability.tracing import configure_tracing, force_flush, leaf_stage, stage

from .conftest import sample
from .test_export_process import RESOURCE, SCOPE


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    force_flush()
    return {s.name: s for s in exporter.get_finished_spans()}


def test_leaf_stages_are_exported_as_children_of_the_enclosing_span() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    with stage("model_inference", {"model.task": "ocr"}) as root:
        for name in ("model_loading", "preprocessing", "inference"):
            with leaf_stage(name, batch_size=1) as leaf:
                assert isinstance(leaf, LeafSpan) and leaf.is_recording()
                leaf.set_attribute("queue_ms", 0.5)
                leaf.set_attribute("nothing", None)  # dropped, as by the SDK
        context_inside = leaf.get_span_context()
        assert not leaf.is_recording()
    spans = _by_name(exporter)
    assert set(spans) == {"model_inference", "model_loading", "preprocessing", "inference"}
    parent = spans["model_inference"]
    assert parent.context.span_id == root.get_span_context().span_id
    ids = set()
    for name in ("model_loading", "preprocessing", "inference"):
        span = spans[name]
        assert span.parent is not None and span.parent.span_id == parent.context.span_id
        assert span.context.trace_id == parent.context.trace_id and span.context.trace_flags.sampled
        assert span.kind == SpanKind.INTERNAL and span.status.status_code == StatusCode.UNSET
        assert dict(span.attributes or {}) == {"batch_size": 1, "queue_ms": 0.5}
        assert span.start_time is not None and span.end_time is not None
        assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time  # type: ignore[operator]
        assert span.resource == parent.resource and span.instrumentation_scope == parent.instrumentation_scope
        ids.add(span.context.span_id)
    assert len(ids) == 3 and 0 not in ids
    # the context the block saw is the context exported
    assert spans["inference"].context == context_inside
    starts = [spans[n].start_time for n in ("model_loading", "preprocessing", "inference")]
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_a_leaf_stage_is_not_current_so_logs_name_the_enclosing_span() -> None:
    configure_tracing(TracingConfig(), "svc", InMemorySpanExporter())
    formatter = JsonFormatter()
    with stage("model_inference") as root, leaf_stage("preprocessing") as leaf:
        assert trace.get_current_span() is root
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "inside", None, None)
        line = formatter.format(record)
        # an SDK span opened inside (which a leaf stage should not have) nests under the parent
        with tracing.get_tracer("library").start_as_current_span("db.query") as db:
            db_parent = db.parent  # type: ignore[attr-defined]
    root_ctx = root.get_span_context()
    assert f'"span_id":"{root_ctx.span_id:016x}"' in line.replace(" ", "")
    assert f'"trace_id":"{root_ctx.trace_id:032x}"' in line.replace(" ", "")
    assert leaf.get_span_context().span_id != root_ctx.span_id
    assert db_parent.span_id == root_ctx.span_id


def test_an_exception_marks_a_leaf_stage_as_an_error_and_propagates() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    with pytest.raises(RuntimeError), stage("model_inference"), leaf_stage("inference"):
        raise RuntimeError("out of memory")
    spans = _by_name(exporter)
    failed = spans["inference"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "RuntimeError: out of memory"
    assert failed.events[0].name == "exception"
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.message"] == "out of memory"
    assert spans["model_inference"].status.status_code == StatusCode.ERROR


def test_outside_a_request_span_a_leaf_stage_is_an_ordinary_stage() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    sdk_tracer = tracing.get_tracer("library")
    with (
        sdk_tracer.start_as_current_span("sdk parent") as sdk_parent,
        leaf_stage("under an sdk span") as span,
    ):
        assert not isinstance(span, LeafSpan)
        assert trace.get_current_span() is span  # an ordinary stage is current
    with leaf_stage("a root") as root:
        assert root.is_recording() and not isinstance(root, LeafSpan)
    spans = _by_name(exporter)
    under = spans["under an sdk span"].parent
    assert under is not None and under.span_id == sdk_parent.get_span_context().span_id
    assert spans["a root"].parent is None


def test_with_tracing_off_or_unsampled_a_leaf_stage_records_nothing() -> None:
    assert configure_tracing(TracingConfig(enabled=False), "svc") is None
    with stage("model_inference"), leaf_stage("inference") as span:
        assert not span.is_recording()
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(sampler="traceidratio", sample_ratio=0.0), "svc", exporter)
    with stage("model_inference"), leaf_stage("inference") as span:
        assert not span.is_recording() and span.get_span_context().is_valid
    assert _by_name(exporter) == {}


def test_a_leaf_stage_that_outlives_its_parent_is_exported_on_its_own() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    with stage("model_inference") as root:
        late = leaf_stage("response")
        late.__enter__()
    late.__exit__(None, None, None)
    spans = _by_name(exporter)
    assert set(spans) == {"model_inference", "response"}
    response_parent = spans["response"].parent
    assert response_parent is not None and response_parent.span_id == root.get_span_context().span_id


def test_leaf_stages_cross_the_pipe_as_the_sdk_would_encode_them() -> None:
    recorder = SpanRecorder(ALWAYS_ON, None, RESOURCE, SCOPE)
    parent = recorder.start("model_inference", None, SpanKind.INTERNAL, {"model.task": "ocr"})
    assert isinstance(parent, FastSpan)
    with LeafSpan(parent, "preprocessing", {"input.size": 7}):
        pass
    with pytest.raises(ValueError), LeafSpan(parent, "inference", None):
        raise ValueError("bad image")
    parent.end()
    expected = encode_spans(parent.readables()).SerializeToString(deterministic=True)
    records = pickle.loads(pickle.dumps(to_records(parent)))
    assert len(records) == 3
    rebuilt = [from_record(r, RESOURCE) for r in records]
    assert encode_spans(rebuilt).SerializeToString(deterministic=True) == expected


def test_leaf_stages_reach_a_real_receiver_and_count_when_dropped() -> None:
    with OtlpReceiver() as receiver:
        cfg = TracingConfig(endpoint=receiver.endpoint + "/v1/traces", sampler="always_on")
        configure_tracing(cfg, "svc")
        with stage("model_inference"):
            for name in ("preprocessing", "inference", "response"):
                with leaf_stage(name):
                    pass
        assert force_flush()
        got = {s.name: s for s in receiver.snapshot()}
        assert set(got) == {"model_inference", "preprocessing", "inference", "response"}
        assert {s.parent_span_id for n, s in got.items() if n != "model_inference"} == {
            got["model_inference"].span_id
        }
        tracing.shutdown_tracing()
        # a full queue drops a span with its leaf stages, and counts each of them
        before = sample("trace_spans_dropped_total", {"reason": "queue_full"})
        processor = SpanExportProcess(cfg, RESOURCE, max_queue_size=1, handoff_interval_s=60)
        try:
            recorder = SpanRecorder(ALWAYS_ON, processor, RESOURCE, SCOPE)
            for _ in range(2):
                span = recorder.start("model_inference")
                assert isinstance(span, FastSpan)
                for name in ("preprocessing", "inference"):
                    with LeafSpan(span, name, None):
                        pass
                span.end()
            assert processor.dropped == {"queue_full": 3}
            assert sample("trace_spans_dropped_total", {"reason": "queue_full"}) == before + 3
        finally:
            processor.shutdown()


def test_a_leaf_stage_takes_its_parent_from_an_explicit_context() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    root = tracing.start_span("model_inference")  # not current, as in the auth dependency
    with leaf_stage("authentication", None, trace.set_span_in_context(root)) as auth:
        assert isinstance(auth, LeafSpan)
        assert trace.get_current_span() is not root
    root.end()
    spans = _by_name(exporter)
    auth_parent = spans["authentication"].parent
    assert auth_parent is not None and auth_parent.span_id == root.get_span_context().span_id
