"""Scores of the user-style split and their place in `mobile-mm eval`'s report."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.data.user_style import UserExample, UserObject
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.training.evaluate import EVAL_TASKS, TASKS, USER_STYLE_TASKS, evaluate_loaded
from mobile_multimodal.training.user_eval import attribute_scores, caption_pairs, fold_to_charset


def _scene(*pairs: tuple[str, str]) -> UserExample:
    objs = tuple(UserObject(shape=s, color=c, center=(10.0, 10.0), extent=5.0) for c, s in pairs)
    return UserExample(image=Image.new("RGB", (64, 64)), objects=objs)


def test_caption_pairs_and_attribute_scores() -> None:
    assert caption_pairs("a large red circle at the top and a small blue star") == [
        ("red", "circle"),
        ("blue", "star"),
    ]
    ex = [_scene(("red", "circle")), _scene(("red", "circle"), ("red", "circle"), ("teal", "star"))]
    preds = [
        "a large red circle in the center and a large red circle at the top",  # invented second circle
        "a red circle and a red circle and a small black star",  # two of three right
    ]
    s = attribute_scores(preds, ex)
    assert s["attribute_recall"] == 3 / 4
    assert s["attribute_precision"] == 3 / 5
    assert s["invented_repeat_rate"] == 1 / 2


def test_fold_to_charset_keeps_what_the_reader_can_write() -> None:
    assert fold_to_charset("Price: 19.99") == "price 1999"
    assert fold_to_charset("Main St.") == "main st"


def test_eval_reports_the_user_style_tasks_beside_the_others(tiny_model: MobileMultiModalLLM) -> None:
    assert EVAL_TASKS == TASKS + USER_STYLE_TASKS
    report = evaluate_loaded(tiny_model, limit=3, tasks=USER_STYLE_TASKS)
    tasks = report["tasks"]
    assert set(tasks) == set(USER_STYLE_TASKS)
    assert tasks["user_captioning"]["primary"] == tasks["user_captioning"]["attribute_recall"]
    assert 0.0 <= tasks["user_ocr_mixed"]["charset_word_accuracy"] <= 1.0
    for entry in tasks.values():
        assert entry["n"] == 3 and 0.0 <= entry["primary"] <= 1.0


def test_eval_cli_runs_chosen_tasks_and_refuses_unknown_ones(tiny_model_dir: Path) -> None:
    runner = CliRunner()
    args = ["eval", "--model", str(tiny_model_dir), "--json", "--limit", "2"]
    result = runner.invoke(app, [*args, "--tasks", "user_vqa,user_ocr_mixed"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(report["tasks"]) == {"user_vqa", "user_ocr_mixed"}
    refused = runner.invoke(app, [*args, "--tasks", "poetry"])
    assert refused.exit_code == 2 and "unknown tasks" in refused.output
