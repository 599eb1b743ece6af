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
    MAGNIFY,
    attribute_scores,
    caption_pairs,
    evaluate_user_tasks,
    fold_to_charset,
    magnified_misses,
    ocr_breakdown,
    recall_by_size,
    region_of,
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
    captions = tasks["user_captioning"]
    assert captions["missed_objects"] == 0 or 0.0 <= captions["missed_named_when_magnified"] <= 1.0


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


class _RecordingCaptioner:
    """Captions every crop "a small red circle" and keeps the crops: the code around the model is
    what this tests (the bundled model's own run is the next test)."""

    def __init__(self) -> None:
        self.crops: list[Image.Image] = []

    def generate_captions(self, images: list[Image.Image]) -> list[str]:
        self.crops += images
        return ["a small red circle"] * len(images)


def test_magnified_misses_caption_each_missed_object_alone() -> None:
    scene = UserExample(
        image=Image.new("RGB", (200, 100)),
        objects=(
            UserObject(shape="circle", color="red", center=(4.0, 96.0), extent=10.0),  # missed, at a corner
            UserObject(shape="star", color="teal", center=(150.0, 50.0), extent=40.0),  # named
            UserObject(shape="star", color="blue", center=(60.0, 50.0), extent=80.0),  # missed, large
        ),
    )
    model = _RecordingCaptioner()
    result = magnified_misses(model, ["a large teal star"], [scene], lambda items, fn, desc: fn(items))
    # the red circle is named in its region, the blue star is not
    assert result == {"missed_objects": 2, "missed_named_when_magnified": 0.5}
    # regions: the larger missed object first; a square of MAGNIFY x the extent inside the image
    assert [c.size for c in model.crops] == [(100, 100), (30, 30)]
    assert region_of(scene, scene.objects[0]) == (0, 70, 30, 100)
    assert region_of(scene, scene.objects[2]) == (10, 0, 110, 100)  # 240 px cut to the image's 100
    assert MAGNIFY * scene.objects[0].extent == 30
    assert magnified_misses(model, ["a red circle, a teal star and a blue star"], [scene], None) == {  # type: ignore[arg-type]
        "missed_objects": 0
    }


def test_the_bundled_models_caption_misses_are_objects_too_small_in_its_input() -> None:
    """Of the objects the bundled model's captions miss on users' scenes (mostly under a tenth of
    the image), most are named once their region alone is captioned (measured 48 of 53 on the
    split's 300 scenes at fp32): their size in the scene input, not the model's knowledge, loses
    them."""
    model = MobileMultiModalLLM.from_pretrained("default")
    entry = evaluate_user_tasks(model, ("user_captioning",), limit=100)["user_captioning"]
    assert entry["missed_objects"] >= 5
    assert entry["missed_named_when_magnified"] >= 0.6
