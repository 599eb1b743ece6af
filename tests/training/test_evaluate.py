from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.training.evaluate import TASKS, attach_report, evaluate_loaded, object_attribute_f1


def test_object_attribute_f1_counts_triples() -> None:
    gold = [[("large", "red", "circle"), ("small", "blue", "star")]]
    assert (
        object_attribute_f1(["a large red circle at the top and a small blue star on the left"], gold) == 1.0
    )
    # one right, one wrong colour: tp=1, fp=1, fn=1 -> 2/4
    assert object_attribute_f1(["a large red circle at the top and a small green star"], gold) == 0.5
    assert object_attribute_f1(["nothing here"], gold) == 0.0


def test_report_has_the_design_shape(tiny_model: MobileMultiModalLLM) -> None:
    report = evaluate_loaded(tiny_model, limit=4)
    assert set(report) == {"model", "quantization", "size_bytes", "tasks"}
    assert set(report["tasks"]) == set(TASKS)
    assert report["tasks"]["captioning"]["primary"] == report["tasks"]["captioning"]["cider_d"]
    assert report["tasks"]["retrieval"]["n"] == 4
    for task in ("ocr", "ocr_unseen_fonts", "vqa", "easy_vqa"):
        assert 0.0 <= report["tasks"][task]["primary"] <= 1.0
        assert report["tasks"][task]["n"] == 4


def test_eval_cli_prints_json_and_attach_report_stores_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--json", "--limit", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["quantization"] == "fp32" and report["tasks"]["vqa"]["n"] == 2
    model = MobileMultiModalLLM.from_pretrained(tiny_model_dir)
    d = model.save(tmp_path / "copy")
    attach_report(d, report)
    assert MobileMultiModalLLM.from_pretrained(d).get_model_info()["eval"] == report


def test_unknown_task_is_rejected(tiny_model: MobileMultiModalLLM) -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        evaluate_loaded(tiny_model, limit=1, tasks=["poetry"])
