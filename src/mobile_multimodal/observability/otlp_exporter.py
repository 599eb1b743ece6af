"""The OTLP span exporter for a tracing configuration: HTTP/protobuf or gRPC, from the SDK.

Shared by the serving process (``tracing.py``, the SDK's exporter thread) and the span export
process (``fasttrace/export_process.py``), which both import it; neither imports the other.

Example::

    exporter = build_exporter(TracingConfig(endpoint="http://127.0.0.1:4318/v1/traces"))
"""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SpanExporter

from mobile_multimodal.observability.config import TracingConfig


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
