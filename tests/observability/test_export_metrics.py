"""mobile_export() sets the export-monitoring series from the manifest: outcome, scores, latency, size."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.observability.export_telemetry import mobile_export

from .conftest import sample


def _manifest(executed: bool = True) -> dict[str, Any]:
    return {
        "files": [{"path": "a.onnx", "bytes": 1000, "sha256": "0" * 64}, {"path": "b.json", "bytes": 24}],
        "validation": {
            "executed": executed,
            "tasks": {"ocr": 0.93, "vqa": 0.97} if executed else {},
            "latency_s": {"ocr": 0.004, "vqa": 0.021} if executed else {},
        },
    }


def test_a_successful_export_sets_outcome_size_scores_and_latency() -> None:
    labels = {"platform": "android", "format": "onnx", "quantization": "int8"}
    before = sample("mobile_exports_total", {**labels, "status": "success"})
    with mobile_export("android", "int8", "onnx") as export:
        export.use_manifest(_manifest())
    assert sample("mobile_exports_total", {**labels, "status": "success"}) == before + 1
    assert sample("mobile_export_size_bytes", {"platform": "android", "quantization": "int8"}) == 1024
    assert sample("mobile_export_validation_score", {**labels, "task": "vqa"}) == pytest.approx(0.97)
    assert sample("mobile_export_runtime_latency_seconds", {**labels, "task": "ocr"}) == pytest.approx(0.004)


def test_an_unexecuted_validation_sets_no_scores() -> None:
    labels = {"platform": "ios", "format": "coreml", "quantization": "int4"}
    with mobile_export("ios", "int4", "coreml") as export:
        export.use_manifest(_manifest(executed=False))
    assert export.size_bytes == 1024
    assert export.validation_scores == {} and export.runtime_latency_s == {}
    assert REGISTRY.get_sample_value("mobile_export_validation_score", {**labels, "task": "ocr"}) is None


def test_a_failed_export_counts_a_failure_with_its_format() -> None:
    labels = {"platform": "ios", "format": "executorch", "quantization": "fp32"}
    before = sample("mobile_exports_total", {**labels, "status": "failure"})
    with pytest.raises(ExportError), mobile_export("ios", "fp32", "executorch"):
        raise ExportError(ExportErrorCode.EXPORT_DISK_FULL, "no space left")
    assert sample("mobile_exports_total", {**labels, "status": "failure"}) == before + 1
