"""The finer scene stage (``ModelConfig.scene_detail_fine``, ``vision.FineDetail``): a scene read
at 256 px still makes 64 tokens; a model warm-started from a 128-px one computes what that one
computed on the 256 px's 2x2 average (the stage starts at zero), and training reaches the stage,
which is stored at INT8 like the rest of the stem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.model.scene_detail_model import tiny_model

from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.quantization.policy import make_plan
from mobile_multimodal.training.batches import BatchBuilder
from mobile_multimodal.training.train import PRESETS, compute_losses
from mobile_multimodal.training.warm_start import warm_start


def test_the_preset_reads_256_px_scenes_as_64_tokens() -> None:
    cfg = ModelConfig.from_name("default-scene-fine")
    assert (cfg.scene_size, cfg.scene_stride, cfg.scene_grid) == (256, 32, 8)
    assert PRESETS["user-style-fine-continue"].model == "default-scene-fine"
    net = tiny_model("tiny-scene-fine").network.eval()
    with torch.no_grad():
        tokens, grid = net.encode_images(torch.zeros(2, 3, 256, 256))
    assert grid == (8, 8) and tokens.shape[:2] == (2, 64)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scene_detail_fine": -1}, "scene_detail_fine"),
        ({"scene_detail_fine": 8, "scene_detail": 0}, "needs scene_detail"),
        ({"scene_detail_fine": 8, "scene_detail": 16, "scene_size": 272}, "multiple of 32"),
    ],
)
def test_a_fine_stage_that_cannot_work_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**ModelConfig.default().to_dict(), **changes})


@torch.no_grad()
def test_warm_started_from_a_128_px_model_it_computes_what_that_model_computed() -> None:
    source = tiny_model("tiny-scene-detail", seed=1)
    source.network.encoder.scene_detail.into_stem.weight.normal_(0, 0.1)  # a trained-like detail
    target = tiny_model("tiny-scene-fine", seed=0)
    report = warm_start(source, target)
    assert report.fresh and all(n.startswith("encoder.scene_detail.fine.") for n in report.fresh)
    src, dst = source.network.eval(), target.network.eval()
    scenes = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens_src, _ = src.encode_images(F.avg_pool2d(scenes, 2))
    tokens_dst, _ = dst.encode_images(scenes)
    torch.testing.assert_close(tokens_dst, tokens_src, rtol=0, atol=0)
    # with the fine stage turned on, the 256-px pixels change the tokens
    dst.encoder.scene_detail.fine.into_detail.weight.normal_(0, 1.0)
    changed, _ = dst.encode_images(scenes)
    assert (changed - tokens_src).abs().max() > 1e-3


def test_training_reaches_the_fine_stage_and_quantization_keeps_it_at_int8() -> None:
    model = tiny_model("tiny-scene-fine")
    # as in a model whose detail stage was trained: a fresh one's way into the stem is zero, and
    # nothing reaches the fine stage behind it until that moves
    with torch.no_grad():
        model.network.encoder.scene_detail.into_stem.weight.normal_(0, 0.1)
    preset = PRESETS["tiny-user-style-detail-continue"]
    cfg = model.config
    builder = BatchBuilder(
        model.tokenizer, 0, preset.sizes, None, cfg.scene_size, cfg.ocr_height, cfg.ocr_width,
        data_version=preset.data_version, ocr_fit=cfg.ocr_fit,
    )  # fmt: skip
    batch = builder.build(0)
    assert batch.images.shape[-2:] == (256, 256)
    compute_losses(model.network.train(), batch, preset.contrastive_weight)["loss"].backward()
    grad = model.network.encoder.scene_detail.fine.into_detail.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    plan = make_plan(model.network, bits=2, group_size=16)
    fine = {name: spec.bits for name, spec in plan.items() if name.startswith("encoder.scene_detail.fine.")}
    assert fine and set(fine.values()) == {8}
