"""The user-style training preset (issue 18): printable-ASCII OCR through the wide letterboxed
reader, data version V2. A tiny run of the same recipe trains, saves and loads with its charset,
reads a mixed-case line in that charset, and exports a bundle that carries the charset and
preprocesses its lines as the model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mobile_multimodal.data import text_images
from mobile_multimodal.data.training_data import V1, V2
from mobile_multimodal.data.vocabulary import OCR_CHARSET_ASCII
from mobile_multimodal.export.decode import BundleModel, load_bundle
from mobile_multimodal.export.onnx import WRITER
from mobile_multimodal.export.pipeline import export_model
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.training.train import PRESETS, TrainOptions, TrainPreset, train_model


def test_user_style_preset_selects_the_new_charset_reader_and_data() -> None:
    preset = PRESETS["user-style"]
    assert (preset.data_version, preset.charset, preset.model) == (V2, "ascii", "default-wide-ocr")
    default = PRESETS["default"]
    # the same recipe as the bundled model's otherwise (batch, schedule shape, optimiser)
    assert (preset.sizes, preset.lr, preset.warmup) == (default.sizes, default.lr, default.warmup)
    assert 3000 <= preset.steps <= 12000
    assert (default.data_version, default.charset) == (V1, "lowercase")  # the bundled model's
    cfg = ModelConfig.from_name(preset.model)
    assert cfg.ocr_width // 8 * cfg.ocr_subframes >= 2 * 32  # CTC room for a 32-char line
    tiny = PRESETS["tiny-user-style"]
    assert (tiny.data_version, tiny.charset, ModelConfig.from_name(tiny.model).ocr_fit) == (
        V2,
        "ascii",
        "letterbox",
    )


def test_a_preset_with_an_unknown_charset_or_data_version_is_refused() -> None:
    with pytest.raises(ValueError, match="charset"):
        TrainPreset(model="tiny", steps=1, sizes=PRESETS["tiny"].sizes, charset="klingon")
    with pytest.raises(ValueError, match="data version"):
        TrainPreset(model="tiny", steps=1, sizes=PRESETS["tiny"].sizes, data_version="v9")


def _mixed_case_lines() -> list[Image.Image]:
    font = text_images.load_font(text_images.TRAIN_FONTS[0], 28)
    lines = []
    for text in ("Hello, World!", "Price: $19.99 (Main St.) #42 ok?"):
        img = Image.new("RGB", (int(font.getlength(text)) + 16, 40), (245, 245, 240))
        ImageDraw.Draw(img).text((8, 4), text, font=font, fill=(20, 20, 20))
        lines.append(img)
    return lines


@pytest.mark.slow
def test_tiny_user_style_run_trains_saves_loads_and_exports_its_charset(tmp_path: Path) -> None:
    out = train_model(
        TrainOptions(
            out=tmp_path / "model", preset="tiny-user-style", evaluate=False, threads=1, ocr_lm=False
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_version"] == V2 and manifest["tokenizer"]["charset"] == OCR_CHARSET_ASCII
    assert (manifest["config"]["ocr_width"], manifest["config"]["ocr_fit"]) == (512, "letterbox")

    model = MobileMultiModalLLM.from_pretrained(out)
    assert model.tokenizer.charset == OCR_CHARSET_ASCII and model.tokenizer.ctc_classes == 96
    assert model.network.ocr_head.classes == 96
    lines = _mixed_case_lines()
    read = model.extract_texts(lines)
    assert all(set(t) <= set(OCR_CHARSET_ASCII) for t in read)

    bundle_dir = tmp_path / "bundle"
    export_model(
        out, platform="android", fmt="onnx", quantization="fp32", out=bundle_dir, validation_examples=2
    )
    tokenizer = json.loads((bundle_dir / "tokenizer.json").read_text())
    assert tokenizer["ctc"]["charset"] == OCR_CHARSET_ASCII
    spec = json.loads((bundle_dir / "bundle.json").read_text())
    assert spec["image_preprocessing"]["text_line"]["fit"] == "letterbox"
    assert spec["image_preprocessing"]["text_line"]["width"] == 512
    assert spec["tasks"]["ocr"]["frames"] == 128
    bundle = load_bundle(bundle_dir)
    exported = BundleModel(bundle, WRITER.open(bundle_dir, bundle.description))
    assert exported.extract_texts(lines) == read
