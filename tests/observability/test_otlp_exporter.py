"""The OTLP exporter a tracing configuration asks for (observability/otlp_exporter.py)."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.otlp_exporter import build_exporter


def test_no_endpoint_no_exporter() -> None:
    assert build_exporter(TracingConfig()) is None


def test_the_protocol_picks_the_exporter() -> None:
    http = build_exporter(TracingConfig(endpoint="http://127.0.0.1:4318/v1/traces"))
    grpc = build_exporter(TracingConfig(endpoint="http://127.0.0.1:4317", protocol="grpc"))
    try:
        assert isinstance(http, HttpExporter) and isinstance(grpc, GrpcExporter)
    finally:
        for exporter in (http, grpc):
            if exporter is not None:
                exporter.shutdown()
