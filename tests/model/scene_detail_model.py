"""A tiny model with the full-resolution scene stage turned on, shared by the model and export
tests of that stage (tests/model/test_scene_detail.py, tests/export/test_scene_detail_export.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from mobile_multimodal.data.vocabulary import CHARSETS
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.tokenizer import Tokenizer
from mobile_multimodal.quantization.policy import make_plan
from mobile_multimodal.quantization.rtn import quantize_rtn_layers
from mobile_multimodal.quantization.variant_io import save_variant


def tiny_model(name: str, charset: str = "ascii", seed: int = 0) -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_config(
        ModelConfig.from_name(name), seed=seed, tokenizer=Tokenizer.default(CHARSETS[charset])
    )


def detail_model_with_int2(directory: Path) -> Path:
    """A tiny scene-detail model with its detail turned on, saved with an INT2 (RTN) variant."""
    model = tiny_model("tiny-scene-detail")
    with torch.no_grad():
        model.network.encoder.scene_detail.into_stem.weight.normal_(
            0, 0.1, generator=torch.Generator().manual_seed(2)
        )
    model.save(directory)
    plan = make_plan(model.network, bits=2, group_size=16)
    quantized = quantize_rtn_layers(model.network, plan)
    save_variant(directory / "int2", model, model.network, quantized, plan, "rtn", 2, 16)
    return directory
