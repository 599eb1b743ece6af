from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mobile_multimodal.observability.config import LoggingConfig, TracingConfig
from mobile_multimodal.observability.export_telemetry import EXPORT_STAGES, mobile_export
from mobile_multimodal.observability.logging import configure_logging, shutdown_logging
from mobile_multimodal.observability.tracing import configure_tracing, force_flush, stage

from .conftest import sample


def test_export_trace_metrics_and_log_line(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "svc", exporter)
    configure_logging(LoggingConfig(stdout=False), tmp_path)
    labels = {"platform": "android", "quantization": "int2"}
    count = sample("mobile_export_duration_seconds_count", labels)
    with mobile_export("android", "int2", "onnx") as export:
        for name in EXPORT_STAGES:
            with stage(name):
                pass
        export.size_bytes = 123_456
    force_flush()
    shutdown_logging()
    assert sample("mobile_export_duration_seconds_count", labels) == count + 1
    assert sample("mobile_export_size_bytes", labels) == 123_456
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["mobile_export"]
    assert root.attributes is not None
    assert root.attributes["export.platform"] == "android"
    assert root.attributes["export.format"] == "onnx"
    assert root.attributes["export.size_bytes"] == 123_456
    for name in EXPORT_STAGES:
        parent = spans[name].parent
        assert parent is not None and parent.span_id == root.context.span_id
    (line,) = [json.loads(x) for x in (tmp_path / "application.log").read_text().splitlines()]
    assert line["operation"] == "mobile_export"  # the guide's LogQL filter
    assert line["trace_id"] == format(root.context.trace_id, "032x")
    assert line["size_bytes"] == 123_456


def test_a_failed_export_is_counted_logged_and_raised(tmp_path: Path) -> None:
    configure_logging(LoggingConfig(stdout=False), tmp_path)
    labels = {"platform": "ios", "quantization": "int4"}
    before = sample("mobile_export_failures_total", labels)
    with pytest.raises(RuntimeError, match="coremltools"), mobile_export("ios", "int4", "coreml"):
        raise RuntimeError("coremltools conversion failed")
    shutdown_logging()
    assert sample("mobile_export_failures_total", labels) == before + 1
    (line,) = [json.loads(x) for x in (tmp_path / "application.log").read_text().splitlines()]
    assert line["level"] == "ERROR" and line["operation"] == "mobile_export"
    assert "coremltools conversion failed" in line["message"]
