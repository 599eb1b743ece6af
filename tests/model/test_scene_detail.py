"""The full-resolution scene stage (``ModelConfig.scene_detail``, ``vision.SceneDetail``): a
scene read at 128 px still makes 64 tokens; a model warm-started from a 64-px one computes what
that one computed (the stage starts at zero), and training reaches the stage; the stage is kept at
INT8 like the rest of the stem, and its quantized model still reads every task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tests.model.scene_detail_model import detail_model_with_int2, tiny_model

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.preprocess import scene_tensor
from mobile_multimodal.training.batches import BatchBuilder
from mobile_multimodal.training.train import PRESETS, compute_losses
from mobile_multimodal.training.warm_start import warm_start


def _model(name: str, charset: str = "ascii", seed: int = 0) -> MobileMultiModalLLM:
    return tiny_model(name, charset, seed)


def test_the_preset_reads_128_px_scenes_as_64_tokens() -> None:
    cfg = ModelConfig.from_name("default-scene-detail")
    assert (cfg.scene_size, cfg.scene_stride, cfg.scene_grid) == (128, 16, 8)
    assert ModelConfig.from_name("default").scene_grid == 8
    net = _model("tiny-scene-detail").network.eval()
    with torch.no_grad():
        tokens, grid = net.encode_images(torch.zeros(2, 3, 128, 128))
    assert grid == (8, 8) and tokens.shape[:2] == (2, 64)
    with pytest.raises(ValueError, match="position table"):
        net.encode_images(torch.zeros(1, 3, 256, 256))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scene_detail": -1}, "scene_detail"),
        ({"scene_detail": 8, "scene_size": 72}, "multiple of 16"),
        ({"scene_detail": 8, "scene_size": 256}, "position table"),
        ({"scene_detail": 8, "stem": "efficientnet-lite0"}, "conv stem"),
    ],
)
def test_a_scene_stage_that_cannot_work_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**ModelConfig.default().to_dict(), **changes})


@torch.no_grad()
def test_warm_started_from_a_64_px_model_it_computes_what_that_model_computed() -> None:
    source = _model("tiny", "lowercase", seed=1)
    target = _model("tiny-scene-detail", seed=0)
    report = warm_start(source, target)
    assert report.fresh and all(n.startswith("encoder.scene_detail.") for n in report.fresh)
    src, dst = source.network.eval(), target.network.eval()
    scenes = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens_src, _ = src.encode_images(F.avg_pool2d(scenes, 2))
    tokens_dst, _ = dst.encode_images(scenes)
    torch.testing.assert_close(tokens_dst, tokens_src, rtol=0, atol=0)
    # with the detail turned on, the full-resolution pixels change the tokens
    dst.encoder.scene_detail.into_stem.weight.normal_(0, 0.1)
    changed, _ = dst.encode_images(scenes)
    assert (changed - tokens_src).abs().max() > 1e-3


def test_training_reaches_the_detail_stage() -> None:
    model = _model("tiny-scene-detail")
    preset = PRESETS["tiny-user-style-detail-continue"]
    cfg = model.config
    builder = BatchBuilder(
        model.tokenizer, 0, preset.sizes, None, cfg.scene_size, cfg.ocr_height, cfg.ocr_width,
        data_version=preset.data_version, ocr_fit=cfg.ocr_fit,
    )  # fmt: skip
    batch = builder.build(0)
    assert batch.images.shape[-2:] == (128, 128)
    compute_losses(model.network.train(), batch, preset.contrastive_weight)["loss"].backward()
    grad = model.network.encoder.scene_detail.into_stem.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def _scene() -> Image.Image:
    img = Image.new("RGB", (400, 300), (240, 240, 235))
    ImageDraw.Draw(img).ellipse((30, 40, 60, 70), fill=(200, 30, 30))  # ~8% of the side
    return img


def test_the_stage_is_stored_at_int8_and_the_quantized_model_reads_scenes(tmp_path: Path) -> None:
    model_dir = detail_model_with_int2(tmp_path / "model")
    fp32 = MobileMultiModalLLM.from_pretrained(model_dir)
    int2 = MobileMultiModalLLM.from_pretrained(model_dir, quantization="int2")
    layers = int2.manifest["quantization"]["layers"]
    assert layers["encoder.scene_detail.conv"]["bits"] == 8
    assert layers["encoder.scene_detail.into_stem"]["bits"] == 8
    assert layers["decoder.blocks.0.mlp.fc1"]["bits"] == 2
    with torch.no_grad():
        x = scene_tensor(_scene(), fp32.config.scene_size)[None]
        a, _ = fp32.network.encode_images(x)
        b, _ = int2.network.encode_images(x)
    assert a.shape == b.shape == (1, 64, fp32.config.dim)
    assert len(int2.generate_captions([_scene()])) == 1
