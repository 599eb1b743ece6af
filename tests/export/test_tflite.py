"""TFLite / LiteRT export, an optional extra (``pip install '.[tflite]'``, ~2 GB): without it the
format is refused with the pip command; with it, the fp32 bundle is built ONCE per session and
runs every task in the LiteRT interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.export.formats import package_version, writer_for

INSTALLED = package_version("litert-torch") is not None and package_version("ai-edge-litert") is not None
needs_tflite = pytest.mark.skipif(
    not INSTALLED, reason="the tflite extra is not installed (pip install '.[tflite]', ~2 GB)"
)
EXAMPLES = 8


def test_toolchain_reports_both_packages_or_none() -> None:
    from mobile_multimodal.export.tflite import WRITER

    assert WRITER.toolchain() == {
        "litert-torch": package_version("litert-torch"),
        "ai-edge-litert": package_version("ai-edge-litert"),
    }


@pytest.mark.skipif(INSTALLED, reason="the tflite extra is installed")
def test_missing_extra_is_refused_with_the_pip_command() -> None:
    with pytest.raises(ExportError) as info:
        writer_for("tflite")
    assert info.value.code == ExportErrorCode.EXPORT_DEPENDENCY_MISSING
    assert "pip install 'mobile-multimodal-llm[tflite]'" in info.value.message


@pytest.fixture(scope="session")
def tflite_fp32(bundles_dir: Path) -> tuple[Path, dict[str, Any]]:
    from mobile_multimodal.export.pipeline import export_model

    out = bundles_dir / "tflite-fp32"
    manifest = export_model(
        "default",
        platform="android",
        fmt="tflite",
        quantization="fp32",
        out=out,
        validation_examples=EXAMPLES,
    )
    return out, manifest


@needs_tflite
@pytest.mark.slow
def test_fp32_bundle_decodes_every_task_like_pytorch_in_litert(
    tflite_fp32: tuple[Path, dict[str, Any]],
) -> None:
    out, manifest = tflite_fp32
    validation = manifest["validation"]
    assert validation["executed"] is True and validation["runtime"] == "litert" and validation["passed"]
    assert (
        set(validation["tasks"]) == set(validation["reference"]) >= {"captioning", "ocr", "vqa", "retrieval"}
    )
    for task, score in validation["tasks"].items():
        assert abs(score - validation["reference"][task]) <= 0.02 * abs(validation["reference"][task]) + 1e-9
    assert validation["max_abs_diff"] < 1e-2
    assert sorted(p.name for p in out.glob("*.tflite")) == [
        "cross_kv.tflite",
        "decoder_step.tflite",
        "image_embed.tflite",
        "ocr.tflite",
        "text_embed.tflite",
        "vision.tflite",
    ]


@pytest.mark.parametrize("quantization", ["int4", "int2"])
def test_low_bit_tflite_is_refused_with_the_reason(quantization: str) -> None:
    from mobile_multimodal.export.tflite import quant_config

    with pytest.raises(ExportError) as info:
        quant_config(quantization)  # before litert-torch is imported or anything converted
    assert info.value.code == ExportErrorCode.EXPORT_CONVERSION_FAILED
    assert (
        "400 columns" in info.value.message
        and f"export {quantization} as onnx or executorch" in info.value.message
    )
