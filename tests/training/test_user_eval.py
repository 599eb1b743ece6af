"""Scores of the user-style split and their place in `mobile-mm eval`'s report."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.data.user_style import UserExample, UserObject, load_user_split
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.training.evaluate import EVAL_TASKS, TASKS, USER_STYLE_TASKS, evaluate_loaded
from mobile_multimodal.training.user_eval import (
    attribute_scores,
    caption_pairs,
    fold_to_charset,
    ocr_breakdown,
    recall_by_size,
)


def _scene(*pairs: tuple[str, str], extent: float = 5.0) -> UserExample:
    objs = tuple(UserObject(shape=s, color=c, center=(10.0, 10.0), extent=extent) for c, s in pairs)
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


def test_recall_by_size_says_which_objects_were_missed() -> None:
    """Objects bucketed by their long side over the image's (64 px here): 5 px is under 10%,
    10 px 10-20%, 30 px 20% and over; of two identical objects the larger is named first."""
    small, middle = _scene(("red", "circle"), extent=5.0), _scene(("teal", "star"), extent=10.0)
    two = UserExample(
        image=Image.new("RGB", (64, 64)),
        objects=(
            UserObject(shape="rectangle", color="blue", center=(10.0, 10.0), extent=5.0),
            UserObject(shape="rectangle", color="blue", center=(40.0, 40.0), extent=30.0),
        ),
    )
    preds = ["a small green circle", "a teal star", "a large blue rectangle"]
    s = recall_by_size(preds, [small, middle, two])
    assert s["attribute_recall_lt10pct"] == 0.0 and s["objects_lt10pct"] == 2
    assert s["attribute_recall_10to20pct"] == 1.0 and s["objects_10to20pct"] == 1
    assert s["attribute_recall_ge20pct"] == 1.0 and s["objects_ge20pct"] == 1
    assert recall_by_size([""], [middle]) == {"attribute_recall_10to20pct": 0.0, "objects_10to20pct": 1}


def test_ocr_breakdown_by_length_and_polarity_on_the_split() -> None:
    """On the split's own mixed-case lines: reading every line right scores 1 in every part,
    a part holds exactly its lines, and reading only the short lines right shows where it fails."""
    lines = load_user_split("user_ocr_mixed", 60)
    perfect = ocr_breakdown([e.text for e in lines], lines)
    parts = [k.removeprefix("lines_") for k in perfect if k.startswith("lines_")]
    assert {"light_on_dark", "dark_on_light"} <= set(parts) and len(parts) >= 4
    assert all(perfect[f"word_accuracy_{p}"] == 1.0 for p in parts)
    assert perfect["lines_light_on_dark"] + perfect["lines_dark_on_light"] == len(lines)
    assert sum(perfect[k] for k in perfect if k.startswith("lines_len_")) == len(lines)
    short_only = ocr_breakdown([e.text if len(e.text) <= 8 else "" for e in lines], lines)
    assert short_only.get("word_accuracy_len_le8", 1.0) == 1.0
    assert short_only["word_accuracy_len_9to16"] == 0.0
