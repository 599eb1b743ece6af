"""The user-style split: deterministic, in the ranges the issue asks for, held out from training,
and drawn by code that does not call the training generator."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest

from mobile_multimodal.data import splits
from mobile_multimodal.data.user_style import (
    MAX_CANVAS,
    MAX_EXTENT,
    MIN_CANVAS,
    MIN_EXTENT,
    USER_NAMESPACE,
    USER_TASKS,
    load_user_split,
    user_example,
)
from mobile_multimodal.data.user_style_draw import BACKGROUND_KINDS, background
from mobile_multimodal.data.vocabulary import OCR_CHARSET

SRC = Path(__file__).resolve().parents[2] / "src" / "mobile_multimodal"


def _png(img: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # type: ignore[attr-defined]
    return buf.getvalue()


@pytest.mark.parametrize("task", USER_TASKS)
def test_an_example_is_a_pure_function_of_task_and_index(task: str) -> None:
    a, b, c = user_example(task, 5), user_example(task, 5), user_example(task, 6)
    assert _png(a.image) == _png(b.image)
    assert (a.text, a.question, a.answer, a.objects) == (b.text, b.question, b.answer, b.objects)
    assert _png(a.image) != _png(c.image)


def test_scenes_cover_the_sizes_positions_and_backgrounds_asked_for() -> None:
    ex = load_user_split("user_captioning", 80)
    sizes = [e.image.size for e in ex]
    assert all(MIN_CANVAS <= s <= MAX_CANVAS for wh in sizes for s in wh)
    assert max(max(wh) for wh in sizes) > 600 and min(min(wh) for wh in sizes) < 100
    extents = []
    for e in ex:
        w, h = e.image.size
        assert 1 <= len(e.objects) <= 3
        for o in e.objects:
            extents.append(o.extent / min(w, h))
            assert o.extent / 2 <= o.center[0] <= w - o.extent / 2
            assert o.extent / 2 <= o.center[1] <= h - o.extent / 2
    assert MIN_EXTENT <= min(extents) < 0.1 and 0.4 < max(extents) <= MAX_EXTENT
    assert {e.meta["background"] for e in ex} == set(BACKGROUND_KINDS)
    # objects are placed anywhere, not on a 3x3 grid: their centres spread over the canvas
    xs = [o.center[0] / e.image.size[0] for e in ex for o in e.objects]
    assert len({round(x, 2) for x in xs}) > 60


def test_backgrounds_are_light_dark_gradient_or_textured() -> None:
    rng = np.random.default_rng(0)
    light = np.asarray(background(rng, 50, 40, "light"))
    dark = np.asarray(background(rng, 50, 40, "dark"))
    assert light.min() > 180 and dark.max() < 80
    grad = np.asarray(background(rng, 120, 80, "gradient")).astype(int)
    assert np.abs(grad[0, 0] - grad[-1, -1]).sum() > 0
    tex = np.asarray(background(rng, 120, 80, "textured")).astype(int)
    assert tex.std() > 2
    with pytest.raises(ValueError, match="unknown background"):
        background(rng, 10, 10, "plaid")


def test_questions_have_answers_defined_anywhere_on_the_canvas() -> None:
    ex = load_user_split("user_vqa", 60)
    assert {e.kind for e in ex} == {"color", "shape", "presence", "count"}
    for e in ex:
        if e.kind == "color":
            shape = e.question.split()[-2]
            assert [o.color for o in e.objects if o.shape == shape] == [e.answer]
        if e.kind == "count":
            assert e.answer == ("one", "two", "three")[len(e.objects) - 1]


def test_text_lines_mix_case_digits_and_punctuation_and_light_on_dark() -> None:
    lower = load_user_split("user_ocr", 40)
    assert all(set(e.text) <= set(OCR_CHARSET) - {" "} and e.text.islower() for e in lower)
    mixed = load_user_split("user_ocr_mixed", 80)
    texts = [e.text for e in mixed]
    assert any(any(c.isupper() for c in t) for t in texts)
    assert any(any(c.isdigit() for c in t) for t in texts)
    assert any(any(c in ".,:!$-" for c in t) for t in texts)
    assert sum(not (set(t) <= set(OCR_CHARSET)) for t in texts) > 60  # mostly outside the charset
    assert {e.meta["light_on_dark"] for e in mixed} == {True, False}
    assert len({e.meta["size"] for e in mixed}) > 20 and len({e.meta["font"] for e in mixed}) > 10


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_split_is_held_out_from_training() -> None:
    # seeds: training draws from namespace 0, the generator's held-out splits from 1
    assert USER_NAMESPACE not in (0, splits.EVAL_NAMESPACE)
    # no training-side module reads the split: only the evaluation does
    readers = {
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*.py")
        if any("user_style" in name for name in _imports(p))
    }
    assert readers <= {
        "data/user_style.py",
        "data/user_style_text.py",
        "training/user_eval.py",
        "training/domain_calibration.py",  # measures the out-of-domain flag on it; trains nothing
    }, readers


def test_the_drawing_code_does_not_call_the_training_generator() -> None:
    for name in ("user_style.py", "user_style_draw.py", "user_style_text.py"):
        used = {m for m in _imports(SRC / "data" / name) if m.startswith("mobile_multimodal.data.")}
        generator = {
            m
            for m in used
            if m.startswith(("mobile_multimodal.data.scenes", "mobile_multimodal.data.text_images"))
        }
        # only the held-out word list (data, not drawing) and its error type come from text_images
        assert generator <= {
            "mobile_multimodal.data.text_images.held_out_words",
            "mobile_multimodal.data.text_images.CorpusResourceError",
        }, generator
