"""The fast path's start-up self-check: it passes on the pinned OpenTelemetry, and when an internal
it relies on has moved, tracing falls back to the SDK's own spans with one warning."""

from __future__ import annotations

import contextvars
import logging
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mobile_multimodal.observability import tracing
from mobile_multimodal.observability.config import TracingConfig, load_config
from mobile_multimodal.observability.fasttrace import otel_internals
from mobile_multimodal.observability.fasttrace.spans import FastSpan
from mobile_multimodal.settings import Settings

TRACING_LOGGER = "mobile_multimodal.observability.tracing"


@pytest.fixture(autouse=True)
def _restore_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tracing, "_fast", tracing._fast)  # put back after the test
    yield


def _request_trace(exporter: InMemorySpanExporter) -> dict[str, trace.Span]:
    """A server span with a stage and a leaf stage under it, as the request path opens them."""
    server = tracing.start_span("POST /inference", kind=trace.SpanKind.SERVER)
    # each context is entered before the next is made, as when nested
    with (
        trace.use_span(server, end_on_exit=True),
        tracing.stage("model_inference", {"model.task": "ocr", "none": None}),
        tracing.leaf_stage("preprocessing"),
    ):
        pass
    tracing.force_flush()
    return {s.name: s for s in exporter.get_finished_spans()}


def test_the_installed_opentelemetry_passes_the_self_check() -> None:
    assert otel_internals.self_check() == []
    exporter = InMemorySpanExporter()
    tracing.configure_tracing(TracingConfig(), "svc", exporter)
    assert tracing.fast_path_active()
    assert isinstance(tracing.start_span("x"), FastSpan)


def _assert_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture, expected: str) -> None:
    exporter = InMemorySpanExporter()
    with caplog.at_level(logging.WARNING, logger=TRACING_LOGGER):
        tracing.configure_tracing(TracingConfig(fast_path=True), "svc", exporter)
    warnings = [r for r in caplog.records if r.name == TRACING_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "falls back" in warnings[0].getMessage() and expected in warnings[0].getMessage()
    assert not tracing.fast_path_active()
    spans = _request_trace(exporter)
    assert not any(isinstance(s, FastSpan) for s in spans.values())
    # the SDK's spans make the same trace: stage and (now ordinary) leaf stage nest as before
    server, inference, pre = spans["POST /inference"], spans["model_inference"], spans["preprocessing"]
    assert inference.parent is not None and inference.parent.span_id == server.context.span_id
    assert pre.parent is not None and pre.parent.span_id == inference.context.span_id
    assert dict(inference.attributes or {}) == {"model.task": "ocr"}


def test_a_missing_span_key_falls_back_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(otel_internals, "_propagation", types.SimpleNamespace())  # _SPAN_KEY gone
    assert otel_internals.self_check() == ["opentelemetry.trace.propagation._SPAN_KEY is gone"]
    _assert_falls_back_with_one_warning(caplog, "_SPAN_KEY is gone")


def test_a_moved_runtime_context_var_falls_back_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(otel_internals, "CONTEXT_VAR", contextvars.ContextVar("elsewhere"))
    _assert_falls_back_with_one_warning(caplog, "_current_context")


def test_a_changed_readable_span_falls_back_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class NewReadableSpan:
        def __init__(self, name: str) -> None:  # the keywords the fast path passes are gone
            self.name = name

    monkeypatch.setattr(otel_internals, "ReadableSpan", NewReadableSpan)
    _assert_falls_back_with_one_warning(caplog, "ReadableSpan")


def test_a_changed_span_context_layout_falls_back_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def swapped(parent: trace.SpanContext, span_id: int) -> trace.SpanContext:
        # what the shortcut would build if SpanContext's fields moved around in the tuple
        return tuple.__new__(trace.SpanContext, (span_id, parent[0], False, parent[3], parent[4], True))

    monkeypatch.setattr(otel_internals, "child_context", swapped)
    _assert_falls_back_with_one_warning(caplog, "tuple layout")


def test_fast_path_off_uses_the_sdk_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    exporter = InMemorySpanExporter()
    with caplog.at_level(logging.WARNING, logger=TRACING_LOGGER):
        tracing.configure_tracing(TracingConfig(fast_path=False), "svc", exporter)
    assert not [r for r in caplog.records if r.name == TRACING_LOGGER]
    assert not tracing.fast_path_active()
    assert set(_request_trace(exporter)) == {"POST /inference", "model_inference", "preprocessing"}


def test_the_environment_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", log_dir=tmp_path / "logs")
    assert load_config(settings).tracing.fast_path is True  # monitoring/observability.yml
    monkeypatch.setenv("MOBILE_MM_TRACING_FAST_PATH", "false")
    settings = Settings(data_dir=tmp_path / "data", log_dir=tmp_path / "logs")
    assert load_config(settings).tracing.fast_path is False
