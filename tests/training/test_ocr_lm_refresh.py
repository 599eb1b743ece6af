"""Refitting a trained model's OCR language model (``training/ocr_lm_refresh.py``): the new file
reaches the model and its variants, and every record that depends on it is measured again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.model.ctc_lm import LM_FILE, MANIFEST_KEY, LmReader, lm_file_bytes
from mobile_multimodal.quantization.report import accuracy_losses, worst_loss
from mobile_multimodal.training.canary_set import evaluate_canary
from mobile_multimodal.training.evaluate import TASKS, attach_report, evaluate_loaded
from mobile_multimodal.training.ocr_lm import build_ocr_reader, describe_reader, ship_ocr_lm
from mobile_multimodal.training.ocr_lm_refresh import main, refresh_ocr_lm
from mobile_multimodal.training.quantize import REPORT_NAME, QuantizeOptions, quantize_model

LIMIT = 4


def _sha(manifest: dict, name: str) -> str:
    return next(f["sha256"] for f in manifest["files"] if f["path"] == name)


@pytest.mark.slow
def test_a_refit_language_model_reaches_the_variants_and_their_records(tmp_path: Path) -> None:
    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)
    directory = model.save(tmp_path / "model")
    first = build_ocr_reader(model.tokenizer, styled_lines=50, beta=0.0)  # reads shorter lines
    ship_ocr_lm(directory, first)
    loaded = MobileMultiModalLLM.from_pretrained(directory)
    attach_report(directory, evaluate_loaded(loaded, LIMIT, TASKS), evaluate_canary(loaded))
    quantize_model(
        QuantizeOptions(
            bits=8,
            method="rtn",
            model=directory,
            out=directory / "int8",
            eval_limit=LIMIT,
            calibration_batches=1,
            use_easy_vqa=False,
        ),
        log=lambda _: None,
    )
    # a different language model (more lines, so other counts) read with the recipe's settings
    second = build_ocr_reader(model.tokenizer, styled_lines=400)
    assert lm_file_bytes(second.lm) != lm_file_bytes(first.lm)
    before = json.loads((directory / "int8" / "manifest.json").read_text())["eval"]["tasks"]["ocr"]
    out = refresh_ocr_lm(directory, reader=second, limit=LIMIT, log=lambda _: None)
    assert out["int8"]["eval"]["tasks"]["ocr"] != before  # it reads differently: measured again

    shipped = lm_file_bytes(second.lm)
    assert (directory / LM_FILE).read_bytes() == shipped == (directory / "int8" / LM_FILE).read_bytes()
    parent, variant = out["model"], out["int8"]
    assert _sha(parent, LM_FILE) == _sha(variant, LM_FILE)
    assert variant["quantization"]["source"]["files"] == parent["files"]
    for name, manifest in (("model", parent), ("int8", variant)):
        on_disk = json.loads((directory / ("" if name == "model" else name) / "manifest.json").read_text())
        assert on_disk == manifest and manifest[MANIFEST_KEY] == describe_reader(second)
        reloaded = MobileMultiModalLLM.from_pretrained(directory / ("" if name == "model" else name))
        assert isinstance(reloaded.ocr_reader, LmReader) and reloaded.ocr_reader.lm.counts == second.lm.counts
        # what it reads now is what the manifest records
        assert manifest["eval"]["tasks"]["ocr"] == evaluate_loaded(reloaded, LIMIT, ("ocr",))["tasks"]["ocr"]
        assert manifest["canary"] == evaluate_canary(reloaded)
    assert json.loads((directory / "eval_report.json").read_text()) == parent["eval"]
    section = variant["quantization"]
    assert section["baseline_eval"]["tasks"]["ocr"] == parent["eval"]["tasks"]["ocr"]
    report = json.loads((directory / "int8" / REPORT_NAME).read_text())
    assert report["tasks"] == accuracy_losses(section["baseline_eval"], variant["eval"])
    assert report["max_accuracy_loss"] == worst_loss(report["tasks"])


def test_the_command_refuses_a_directory_without_a_model_and_a_limit_below_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "not a model directory" in capsys.readouterr().err
    MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "model"), "--limit", "0"])
    assert exit_info.value.code == 2 and "--limit must be at least 1" in capsys.readouterr().err
