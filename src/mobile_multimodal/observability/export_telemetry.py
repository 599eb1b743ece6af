"""Telemetry of one mobile export: the guide's ``mobile_export`` trace, its metrics and log lines.

The export code wraps one export in :func:`mobile_export` and opens the guide's stages inside
it with :func:`~mobile_multimodal.observability.tracing.stage` (model_validation →
platform_selection → quantization → export → validation → storage). On exit it records
``mobile_exports_total{status}``, ``mobile_export_duration_seconds`` (trace_id exemplar),
``mobile_export_size_bytes``, the validation's per-task ``mobile_export_validation_score`` and
``mobile_export_runtime_latency_seconds`` and, on an exception, ``mobile_export_failures_total``,
and logs one line with ``operation="mobile_export"`` (the guide's LogQL
``{service="mobile-multimodal-llm"} | json | operation="mobile_export"``). An exception's
``code`` attribute (ExportError) becomes the line's ``error_code``.

A CLI export is a short-lived process: these in-process series die with it, so the CLI pushes the
export history to a Pushgateway instead (observability/pushgateway.py).

Example::

    with mobile_export("android", "int2", "onnx") as export:
        with stage("model_validation"):
            ...
        with stage("storage"):
            export.use_manifest(manifest)   # size, validation scores and runtime latency
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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
    # task -> primary metric / mean seconds per example, measured in the export's own runtime
    validation_scores: dict[str, float] = field(default_factory=dict)
    runtime_latency_s: dict[str, float] = field(default_factory=dict)

    def use_manifest(self, manifest: dict[str, Any]) -> None:
        """Take size and validation results from an export manifest (DESIGN.md "Export manifest").

        ``validation.tasks`` gives the scores; ``validation.latency_s`` (task -> mean seconds per
        example) the runtime latency. Formats that cannot execute here (``executed: false``)
        have no measured scores or latency, so none are recorded for them.
        """
        files = manifest.get("files") or []
        self.size_bytes = sum(int(f["bytes"]) for f in files)
        validation = manifest.get("validation") or {}
        if validation.get("executed"):
            self.validation_scores = {t: float(v) for t, v in (validation.get("tasks") or {}).items()}
            self.runtime_latency_s = {t: float(v) for t, v in (validation.get("latency_s") or {}).items()}


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
            metrics.EXPORTS.labels(platform, fmt, quantization, "failure").inc()
            code = getattr(exc, "code", None)
            _log.error(
                "mobile export failed: %s: %s",
                type(exc).__name__,
                exc,
                extra={
                    **fields,
                    "duration_ms": duration_ms,
                    "error_type": type(exc).__name__,
                    "error_code": str(code) if code is not None else None,
                },
            )
            raise
        duration = time.perf_counter() - start
        metrics.EXPORT_DURATION.labels(platform, quantization).observe(duration, trace_exemplar())
        span.set_attribute("export.duration_s", duration)
        metrics.EXPORTS.labels(platform, fmt, quantization, "success").inc()
        if record.size_bytes is not None:
            metrics.EXPORT_SIZE.labels(platform, quantization).set(record.size_bytes)
            span.set_attribute("export.size_bytes", record.size_bytes)
        for task, score in record.validation_scores.items():
            metrics.EXPORT_VALIDATION_SCORE.labels(platform, fmt, quantization, task).set(score)
        for task, seconds in record.runtime_latency_s.items():
            metrics.EXPORT_RUNTIME_LATENCY.labels(platform, fmt, quantization, task).set(seconds)
        _log.info(
            "mobile export completed",
            extra={**fields, "duration_ms": round(duration * 1000, 1), "size_bytes": record.size_bytes},
        )
