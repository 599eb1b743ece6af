"""Each ONNX bundle is built ONCE per test session (an export with its validation costs tens of
seconds on 2 cores) and shared by every test that reads it. The fp32 and int2 builds record the
export's spans, so the trace is tested on a real export rather than a second one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from mobile_multimodal.export.pipeline import export_model
from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.tracing import configure_tracing, force_flush, shutdown_tracing

# held-out examples per task in the tests' validation (the export benchmark runs the full splits)
EXAMPLES = 16
FEW_EXAMPLES = 8


@dataclass(frozen=True)
class BuiltBundle:
    out: Path
    manifest: dict[str, Any]
    spans: Sequence[ReadableSpan]


def sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def build(out: Path, quantization: str, examples: int, platform: str = "android") -> BuiltBundle:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingConfig(), "export-tests", exporter)
    try:
        manifest = export_model(
            "default",
            platform=platform,
            fmt="onnx",
            quantization=quantization,
            out=out,
            validation_examples=examples,
        )
        force_flush()
        spans = exporter.get_finished_spans()
    finally:
        shutdown_tracing()
    return BuiltBundle(out, manifest, spans)


@pytest.fixture(scope="session")
def bundles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def onnx_fp32(bundles_dir: Path) -> BuiltBundle:
    return build(bundles_dir / "onnx-fp32", "fp32", EXAMPLES)


@pytest.fixture(scope="session")
def onnx_int2(bundles_dir: Path) -> BuiltBundle:
    return build(bundles_dir / "onnx-int2", "int2", EXAMPLES, platform="ios")


@pytest.fixture(scope="session")
def onnx_int4(bundles_dir: Path) -> BuiltBundle:
    return build(bundles_dir / "onnx-int4", "int4", FEW_EXAMPLES)


@pytest.fixture(scope="session")
def onnx_int8(bundles_dir: Path) -> BuiltBundle:
    return build(bundles_dir / "onnx-int8", "int8", FEW_EXAMPLES)
