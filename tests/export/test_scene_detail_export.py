"""A model that reads 128-px scenes through its detail stage (``ModelConfig.scene_detail``)
exports like any other: the bundle says its scene input is 128 px, and the ONNX bundle, fp32 and
INT2, and the ExecuTorch bundle decode what PyTorch decodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from tests.model.scene_detail_model import detail_model_with_int2

from mobile_multimodal.export.decode import BundleModel, load_bundle
from mobile_multimodal.export.formats import package_version, writer_for
from mobile_multimodal.export.pipeline import export_model
from mobile_multimodal.model import MobileMultiModalLLM


def _scenes() -> list[Image.Image]:
    images = []
    for i, size in enumerate((96, 300, 1000)):
        img = Image.new("RGB", (size, size), (235, 235, 230))
        r = size // (6 + 4 * i)
        ImageDraw.Draw(img).ellipse((size // 3, size // 3, size // 3 + r, size // 3 + r), fill=(30, 60, 200))
        images.append(img)
    return images


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return detail_model_with_int2(tmp_path_factory.mktemp("detail") / "model")


def _bundle(model_dir: Path, out: Path, fmt: str, quantization: str) -> BundleModel:
    manifest = export_model(
        model_dir, platform="android", fmt=fmt, quantization=quantization, out=out, validation_examples=2
    )
    assert manifest["validation"]["passed"] is True
    spec = json.loads((out / "bundle.json").read_text())
    scene = spec["image_preprocessing"]["scene"]
    assert (scene["height"], scene["width"]) == (128, 128)
    bundle = load_bundle(out)
    return BundleModel(bundle, writer_for(fmt).open(out, bundle.description))


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_the_onnx_bundle_reads_128_px_scenes_as_pytorch_does(
    model_dir: Path, tmp_path: Path, quantization: str
) -> None:
    exported = _bundle(model_dir, tmp_path / "onnx", "onnx", quantization)
    model = MobileMultiModalLLM.from_pretrained(model_dir, quantization=quantization)
    images = _scenes()
    np.testing.assert_allclose(
        exported.get_image_embeddings(images), model.get_image_embeddings(images), atol=1e-4
    )
    assert exported.generate_captions(images) == model.generate_captions(images)


@pytest.mark.skipif(package_version("executorch") is None, reason="executorch is not installed")
def test_the_executorch_bundle_reads_128_px_scenes_as_pytorch_does(model_dir: Path, tmp_path: Path) -> None:
    exported = _bundle(model_dir, tmp_path / "pte", "executorch", "fp32")
    model = MobileMultiModalLLM.from_pretrained(model_dir)
    images = _scenes()
    np.testing.assert_allclose(
        exported.get_image_embeddings(images), model.get_image_embeddings(images), atol=1e-4
    )
    assert exported.generate_captions(images) == model.generate_captions(images)
