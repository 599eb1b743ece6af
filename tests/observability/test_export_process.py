"""Span export from a child process: exact round trip, a real OTLP receiver, and every failure path."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation import _SPAN_KEY
from tests.integration.otlp_receiver import OtlpReceiver

from mobile_multimodal.observability import tracing
from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.fasttrace.export_process import SpanExportProcess, from_record, to_record
from mobile_multimodal.observability.fasttrace.otel_internals import child_context as _child_context
from mobile_multimodal.observability.fasttrace.spans import FastSpan, SpanRecorder
from mobile_multimodal.observability.identity import instance_id

from .conftest import SteppedClock, sample

pytestmark = pytest.mark.usefixtures("span_mode")

RESOURCE = Resource.create({"service.name": "svc", "service.instance.id": "host-1"})
SCOPE = InstrumentationScope("mobile_multimodal", "0.1.0")
REMOTE = trace.SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    trace_state=trace.TraceState([("vendor", "value")]),
)


def _fast_spans() -> list[FastSpan]:
    """A server span under a remote caller, and a stage under it with every kind of content."""
    recorder = SpanRecorder(ALWAYS_ON, None, RESOURCE, SCOPE)
    caller = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    server = recorder.start("POST /inference", caller, SpanKind.SERVER, {"url.path": "/inference"})
    child = recorder.start("preprocessing", trace.set_span_in_context(server), attributes={"input.size": 7})
    assert isinstance(server, FastSpan) and isinstance(child, FastSpan)
    child.set_attribute("tags", ["a", "b"])
    child.set_attribute("ratio", 0.5)
    child.add_link(REMOTE, {"why": "batch"})
    child.record_exception(ValueError("bad image"))
    child.set_status(StatusCode.ERROR, "bad image")
    child.end()
    server.set_attribute("http.response.status_code", 400)
    server.end()
    return [child, server]


def _sdk_span() -> ReadableSpan:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    caller = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    with provider.get_tracer("sqlalchemy", "2.0").start_as_current_span("SELECT", caller) as span:
        span.set_attribute("db.system", "sqlite")
        span.add_event("rows", {"count": 3})
    provider.shutdown()
    (finished,) = exporter.get_finished_spans()
    return finished


def test_a_span_crosses_the_pipe_unchanged() -> None:
    """The child encodes exactly the OTLP bytes the serving process would have encoded."""
    fast = _fast_spans()
    originals: list[ReadableSpan] = [s.readable() for s in fast] + [_sdk_span()]
    records = [to_record(s) for s in fast] + [to_record(originals[-1])]
    rebuilt = [from_record(r, RESOURCE) for r in pickle.loads(pickle.dumps(records))]
    assert [s.instrumentation_scope for s in rebuilt] == [s.instrumentation_scope for s in originals]
    expected = encode_spans(originals).SerializeToString(deterministic=True)
    assert encode_spans(rebuilt).SerializeToString(deterministic=True) == expected


def test_the_shortcuts_agree_with_the_api() -> None:
    """FastSpan reads the context with the API's private key and builds child contexts by hand."""
    span = trace.NonRecordingSpan(REMOTE)
    assert trace.get_current_span(Context({_SPAN_KEY: span})) is span
    child = _child_context(REMOTE, 0x1234)
    assert child == trace.SpanContext(REMOTE.trace_id, 0x1234, False, REMOTE.trace_flags, REMOTE.trace_state)
    assert child.is_valid and not child.is_remote and child.trace_state == REMOTE.trace_state


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _cfg(endpoint: str, **kw: object) -> TracingConfig:
    return TracingConfig(endpoint=endpoint, sampler="always_on", **kw)


def _traces(receiver: OtlpReceiver) -> str:
    return receiver.endpoint + "/v1/traces"


def test_spans_reach_a_real_receiver_from_a_child_process(receiver: OtlpReceiver) -> None:
    tracing.configure_tracing(_cfg(_traces(receiver)), "svc")
    recorder = tracing._recorder
    assert recorder is not None
    processor = recorder.processor
    assert isinstance(processor, SpanExportProcess)
    assert processor.pid is not None and processor.pid != os.getpid()
    with tracing.stage("model_inference", {"model.task": "ocr"}) as root:
        with (
            tracing.stage("preprocessing", input_size=12),
            tracing.get_tracer("library").start_as_current_span("db.query"),
        ):
            pass
        root.set_attribute("output.size", 5)
    assert tracing.force_flush()  # returns only once the child has exported
    # it yields the CPU to the serving process
    assert os.getpriority(os.PRIO_PROCESS, processor.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    spans = {s.name: s for s in receiver.snapshot()}
    assert set(spans) == {"model_inference", "preprocessing", "db.query"}
    assert spans["model_inference"].attributes == {"model.task": "ocr", "output.size": 5}
    assert spans["preprocessing"].attributes == {"input_size": 12}
    assert spans["preprocessing"].parent_span_id == spans["model_inference"].span_id
    assert spans["db.query"].parent_span_id == spans["preprocessing"].span_id  # an SDK span, nested
    assert {s.trace_id for s in spans.values()} == {spans["model_inference"].trace_id}
    assert spans["db.query"].resource["service.name"] == "svc"
    tracing.shutdown_tracing()
    assert processor._proc is not None and processor._proc.poll() == 0  # the child exited cleanly


def test_shutdown_exports_what_is_still_queued(receiver: OtlpReceiver) -> None:
    tracing.configure_tracing(_cfg(_traces(receiver)), "svc")
    for i in range(5):
        with tracing.stage(f"stage-{i}"):
            pass
    tracing.shutdown_tracing()  # no flush first
    assert sorted(s.name for s in receiver.snapshot()) == [f"stage-{i}" for i in range(5)]


def test_the_sdk_exporter_thread_remains_an_option(receiver: OtlpReceiver) -> None:
    tracing.configure_tracing(_cfg(_traces(receiver), export_process=False), "svc")
    assert tracing._recorder is not None
    assert isinstance(tracing._recorder.processor, BatchSpanProcessor)
    with tracing.stage("model_inference"):
        pass
    assert tracing.force_flush()
    assert [s.name for s in receiver.snapshot()] == ["model_inference"]


def _finished(n: int) -> list[FastSpan]:
    recorder = SpanRecorder(ALWAYS_ON, None, RESOURCE, SCOPE)
    spans = []
    for i in range(n):
        span = recorder.start(f"s{i}")
        assert isinstance(span, FastSpan)
        span.end()
        spans.append(span)
    return spans


def test_a_full_queue_drops_and_counts(receiver: OtlpReceiver) -> None:
    before = sample("trace_spans_dropped_total", {"reason": "queue_full"})
    processor = SpanExportProcess(
        _cfg(_traces(receiver)), RESOURCE, max_queue_size=3, handoff_interval_s=60, handoff_batch=1000
    )
    try:
        for span in _finished(5):
            processor.submit(span)
        assert processor.dropped == {"queue_full": 2}
        assert sample("trace_spans_dropped_total", {"reason": "queue_full"}) == before + 2
        assert processor.force_flush()
        assert sorted(s.name for s in receiver.snapshot()) == ["s0", "s1", "s2"]
    finally:
        processor.shutdown()


def test_a_dead_export_process_costs_spans_then_comes_back(receiver: OtlpReceiver) -> None:
    before = sample("trace_spans_dropped_total", {"reason": "exporter_down"})
    clock = SteppedClock()  # when the dead child is due again must not depend on this machine's speed
    processor = SpanExportProcess(
        _cfg(_traces(receiver)), RESOURCE, handoff_interval_s=60, respawn_interval_s=10, clock=clock
    )
    try:
        assert processor.force_flush()  # up and running
        first = processor.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert processor._proc is not None
        processor._proc.wait(timeout=60)
        lost, early, kept = _finished(3)
        processor.submit(lost)
        processor._hand_off()  # the pipe is broken: counted, never raised
        assert processor.dropped["exporter_down"] == 1
        assert sample("trace_spans_dropped_total", {"reason": "exporter_down"}) == before + 1
        clock.now += 9  # not yet due: still down, still counted
        processor.submit(early)
        processor._hand_off()
        assert processor.pid == first
        assert processor.dropped["exporter_down"] == 2
        clock.now += 1  # respawn_interval_s after the first start
        processor.submit(kept)
        assert processor.force_flush()  # started again, and exported
        assert processor.pid not in (None, first)
        assert [s.name for s in receiver.snapshot()] == [kept._name]
        assert sample("trace_spans_dropped_total", {"reason": "exporter_down"}) == before + 2
    finally:
        processor.shutdown()


def test_a_collector_that_is_down_is_reported_back(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds; the child inherits it
    before = sample("trace_spans_dropped_total", {"reason": "export_failed"})
    with socket.socket() as bound:  # bound and never listening: no collector can be there meanwhile
        bound.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{bound.getsockname()[1]}/v1/traces"
        processor = SpanExportProcess(_cfg(nobody), RESOURCE, handoff_interval_s=60)
        try:
            for span in _finished(3):
                processor.submit(span)
            assert processor.force_flush(timeout_millis=60000)  # the export ran, and failed
            assert processor.dropped["export_failed"] == 3
            assert sample("trace_spans_dropped_total", {"reason": "export_failed"}) == before + 3
        finally:
            processor.shutdown()
    # the child's complaints are JSON lines that name the serving process
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.strip()]
    assert lines, "the exporter's failure was not logged"
    assert all(line["instance_id"] == instance_id() for line in lines)
    assert any(line["level"] in {"WARNING", "ERROR"} for line in lines)


def test_without_an_endpoint_there_is_nothing_to_start() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        SpanExportProcess(TracingConfig(), RESOURCE)


def test_a_span_that_cannot_be_encoded_costs_only_itself(receiver: OtlpReceiver) -> None:
    before = sample("trace_spans_dropped_total", {"reason": "export_failed"})
    processor = SpanExportProcess(_cfg(_traces(receiver)), RESOURCE, handoff_interval_s=60)
    try:
        good, bad = _finished(2)
        bad._attributes["lock"] = threading.Lock()  # type: ignore[assignment]  # not an attribute value
        processor.submit(good)
        processor.submit(bad)
        assert processor.force_flush()
        assert [s.name for s in receiver.snapshot()] == [good._name]
        assert processor.dropped["export_failed"] == 1
        assert sample("trace_spans_dropped_total", {"reason": "export_failed"}) == before + 1
    finally:
        processor.shutdown()


def test_the_request_path_sets_the_context_the_api_reads() -> None:
    """stage() sets the current context through OpenTelemetry's own ContextVar, not its API."""
    from opentelemetry import context as otel_context

    from mobile_multimodal.observability.fasttrace.otel_internals import CONTEXT_VAR

    assert CONTEXT_VAR is not None  # the default runtime context: the shortcut is in use
    tracing.configure_tracing(TracingConfig(sampler="always_on"), "svc")
    before = otel_context.get_current()
    with tracing.stage("outer") as outer:
        assert trace.get_current_span() is outer
        with tracing.stage("inner") as inner:
            assert trace.get_current_span() is inner
            assert inner.get_span_context().trace_id == outer.get_span_context().trace_id
        assert trace.get_current_span() is outer
    assert otel_context.get_current() == before
