"""Telemetry of one mobile export: the guide's ``mobile_export`` trace, its metrics and log lines.

The export code wraps one export in :func:`mobile_export` and opens the guide's stages inside
it with :func:`~mobile_multimodal.observability.tracing.stage` (model_validation →
platform_selection → quantization → export → validation → storage). On exit it records
``mobile_export_duration_seconds`` (trace_id exemplar), ``mobile_export_size_bytes`` and, on an
exception, ``mobile_export_failures_total``, and logs one line with ``operation="mobile_export"``
(the guide's LogQL ``{service="mobile-multimodal-llm"} | json | operation="mobile_export"``).

Example::

    with mobile_export("android", "int2", "onnx") as export:
        with stage("model_validation"):
            ...
        with stage("storage"):
            export.size_bytes = sum(f.stat().st_size for f in files)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.trace import Span

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.tracing import stage, trace_exemplar

EXPORT_STAGES = ("model_validation", "platform_selection", "quantization", "export", "validation", "storage")
_log = logging.getLogger("mobile_multimodal.export")


@dataclass
class ExportRecord:
    """Filled in by the export code; read when the export ends."""

    span: Span
    size_bytes: int | None = None


@contextmanager
def mobile_export(platform: str, quantization: str, fmt: str) -> Iterator[ExportRecord]:
    """One export as a ``mobile_export`` span with ``export.*`` attributes, metrics and a log line."""
    attrs = {"export.platform": platform, "export.quantization": quantization, "export.format": fmt}
    fields = {"operation": "mobile_export", "platform": platform, "quantization": quantization, "format": fmt}
    start = time.perf_counter()
    with stage("mobile_export", attrs) as span:
        record = ExportRecord(span)
        try:
            yield record
        except BaseException as exc:
            duration_ms = round((time.perf_counter() - start) * 1000, 1)
            metrics.EXPORT_FAILURES.labels(platform, quantization).inc()
            _log.error(
                "mobile export failed: %s: %s",
                type(exc).__name__,
                exc,
                extra={**fields, "duration_ms": duration_ms, "error_type": type(exc).__name__},
            )
            raise
        duration = time.perf_counter() - start
        metrics.EXPORT_DURATION.labels(platform, quantization).observe(duration, trace_exemplar())
        span.set_attribute("export.duration_s", duration)
        if record.size_bytes is not None:
            metrics.EXPORT_SIZE.labels(platform, quantization).set(record.size_bytes)
            span.set_attribute("export.size_bytes", record.size_bytes)
        _log.info(
            "mobile export completed",
            extra={**fields, "duration_ms": round(duration * 1000, 1), "size_bytes": record.size_bytes},
        )
