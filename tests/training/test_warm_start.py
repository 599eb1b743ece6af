"""Warm start (`train --init-from` with a reshaping preset, training/warm_start.py): a lowercase
256-px model carried into the wide ASCII reader keeps everything it computed -- image tokens,
the decoder's logits, the reader's scores of every character both sets have -- and a tensor that
cannot carry over is an error that names it, not a silent fresh start."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mobile_multimodal.data.training_data import V3
from mobile_multimodal.data.vocabulary import CHARSETS
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.tokenizer import Tokenizer
from mobile_multimodal.training.train import PRESETS, TrainOptions, train_model
from mobile_multimodal.training.warm_start import warm_start


def _model(name: str, charset: str, seed: int) -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_config(
        ModelConfig.from_name(name), seed=seed, tokenizer=Tokenizer.default(CHARSETS[charset])
    )


@torch.no_grad()
def test_the_wide_ascii_model_computes_what_the_source_computed() -> None:
    source = _model("tiny", "lowercase", seed=1)
    target = _model("tiny-wide-ocr", "ascii", seed=0)
    report = warm_start(source, target)
    assert report.grown == ["encoder.col_pos 32->64 rows"]
    assert report.characters_kept == len(CHARSETS["lowercase"])
    assert {"A", "Z", "!", "$", "."} <= set(report.characters_new)

    src, dst = source.network.eval(), target.network.eval()
    scenes = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens_src, _ = src.encode_images(scenes)
    tokens_dst, _ = dst.encode_images(scenes)
    torch.testing.assert_close(tokens_dst, tokens_src, rtol=0, atol=0)
    seq = torch.tensor([[1, 5, 9, 12]])
    valid = torch.ones_like(seq, dtype=torch.bool)
    torch.testing.assert_close(
        dst.decoder(seq, tokens_dst[:1], valid), src.decoder(seq, tokens_src[:1], valid)
    )

    # a 256-px line: the same column tokens; every shared character (and blank) scores the same
    line = torch.rand(1, 3, 32, 256, generator=torch.Generator().manual_seed(1))
    cols_src, _ = src.encoder(line, columns=True)
    cols_dst, _ = dst.encoder(line, columns=True)
    torch.testing.assert_close(cols_dst, cols_src, rtol=0, atol=0)
    raw_src = src.ocr_head.fc2(torch.nn.functional.gelu(src.ocr_head.fc1(cols_src)))
    raw_dst = dst.ocr_head.fc2(torch.nn.functional.gelu(dst.ocr_head.fc1(cols_dst)))
    raw_src = raw_src.view(1, -1, source.config.ocr_classes)
    raw_dst = raw_dst.view(1, -1, target.config.ocr_classes)
    for i, ch in enumerate(source.tokenizer.charset):
        j = target.tokenizer.charset.index(ch)
        torch.testing.assert_close(raw_dst[..., 1 + j], raw_src[..., 1 + i])
    torch.testing.assert_close(raw_dst[..., 0], raw_src[..., 0])


def test_what_cannot_carry_over_is_named() -> None:
    with pytest.raises(ValueError, match=r"encoder\.row_pos|encoder\.proj|embeddings"):
        warm_start(_model("default", "lowercase", seed=0), _model("tiny-wide-ocr", "ascii", seed=0))
    other_words = MobileMultiModalLLM.from_config(
        ModelConfig.from_name("tiny"), tokenizer=Tokenizer(words=["a", "b"], charset=CHARSETS["lowercase"])
    )
    with pytest.raises(ValueError, match="word vocabularies differ"):
        warm_start(other_words, _model("tiny-wide-ocr", "ascii", seed=0))


@pytest.mark.parametrize(
    ("preset", "scene_size"), [("tiny-user-style-continue", 64), ("tiny-user-style-detail-continue", 128)]
)
def test_a_reshaping_preset_trains_from_the_init_model_and_records_it(
    tmp_path: Path, preset: str, scene_size: int
) -> None:
    base = _model("tiny", "lowercase", seed=3).save(tmp_path / "base")
    out = train_model(
        TrainOptions(
            out=tmp_path / "cont",
            preset=preset,
            init_from=base,
            steps=2,
            evaluate=False,
            threads=1,
            ocr_lm=False,
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["config"]["ocr_width"], manifest["tokenizer"]["charset"]) == (512, CHARSETS["ascii"])
    assert manifest["config"]["scene_size"] == scene_size
    warm = manifest["training"]["init_from"]["warm_start"]
    assert warm["ocr_characters_kept"] == len(CHARSETS["lowercase"]) and "A" in warm["ocr_characters_new"]
    assert bool(warm["tensors_fresh"]) == (scene_size == 128)  # the detail stage starts fresh
    assert PRESETS["user-style-continue"].reshape_init and not PRESETS["finetune-vqa"].reshape_init
    assert MobileMultiModalLLM.from_pretrained(out).tokenizer.charset == CHARSETS["ascii"]
    # without a model to continue, the preset refuses before any work (no silent fresh start)
    with pytest.raises(ValueError, match="--init-from"):
        train_model(TrainOptions(out=tmp_path / "none", preset=preset, steps=1))
    assert not (tmp_path / "none").exists()


def test_the_fonts_phase_continues_a_detail_model_and_refuses_any_other(tmp_path: Path) -> None:
    base = _model("tiny", "lowercase", seed=3).save(tmp_path / "base")

    def run(out: str, preset: str, init_from: Path) -> Path:
        opts = TrainOptions(
            tmp_path / out, preset=preset, init_from=init_from, steps=2, evaluate=False, ocr_lm=False
        )
        return train_model(replace(opts, threads=1))

    detail = run("detail", "tiny-user-style-detail-continue", base)
    out = run("fonts", "tiny-user-style-fonts-continue", detail)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_version"] == V3 and manifest["config"]["scene_detail"] > 0
    assert manifest["training"]["init_from"]["path"] == str(detail)
    assert PRESETS["user-style-fonts-continue"].data_version == V3
    # the 64-px lowercase model is not what the phase continues: refused before any step
    with pytest.raises(ValueError, match=r"differs in .*scene_size.*charset"):
        run("wrong", "tiny-user-style-fonts-continue", base)
    assert not (tmp_path / "wrong" / "checkpoint.pt").exists()
