from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.training.train import TrainOptions, train_model


@pytest.mark.slow
def test_short_training_run_lowers_the_loss_and_is_reproducible(tmp_path: Path) -> None:
    out = train_model(TrainOptions(out=tmp_path / "a", preset="tiny", steps=30, evaluate=False, threads=1))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    # the same seed gives the same weights, whether the batches were drawn ahead by a worker
    # process (the first run: data_workers' default for one process) or in the training process
    again = train_model(
        TrainOptions(
            out=tmp_path / "b",
            preset="tiny",
            steps=30,
            evaluate=False,
            threads=1,
            ocr_lm=False,
            data_workers=0,
        )
    )
    first_model, second_model = (
        MobileMultiModalLLM.from_pretrained(out),
        MobileMultiModalLLM.from_pretrained(again),
    )
    a, b = first_model.network.state_dict(), second_model.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the OCR reader's language model ships with the weights (TrainOptions.ocr_lm, the default),
    # listed in the manifest and attached on loading; a run without it reads greedily
    assert "ocr_lm.json.gz" in [f["path"] for f in first_model.manifest["files"]]
    reader = first_model.ocr_reader
    assert reader is not None and reader.lm.alphabet == first_model.tokenizer.charset
    assert second_model.ocr_reader is None and "ocr_decoding" not in second_model.manifest


@pytest.mark.slow
def test_resume_continues_to_the_same_weights(tmp_path: Path) -> None:
    straight = train_model(
        TrainOptions(out=tmp_path / "s", preset="tiny", steps=20, evaluate=False, threads=1, ocr_lm=False)
    )
    # interrupt the same 20-step schedule after 10 steps, then resume it
    train_model(
        TrainOptions(
            out=tmp_path / "r",
            preset="tiny",
            steps=20,
            stop_after=10,
            evaluate=False,
            threads=1,
            ocr_lm=False,
        )
    )
    assert not (tmp_path / "r" / "manifest.json").exists()
    resumed = train_model(
        TrainOptions(out=tmp_path / "r", preset="tiny", steps=20, evaluate=False, threads=1, ocr_lm=False)
    )
    a = MobileMultiModalLLM.from_pretrained(straight).network.state_dict()
    b = MobileMultiModalLLM.from_pretrained(resumed).network.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
