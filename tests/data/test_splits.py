from __future__ import annotations

import numpy as np
import pytest

from mobile_multimodal.data import splits, text_images
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import Tokenizer
from mobile_multimodal.training.batches import BatchBuilder, BatchSizes


def test_eval_splits_are_reproducible() -> None:
    a = load_eval_split("vqa", 5)
    b = load_eval_split("vqa", 5)
    assert [(e.question, e.answer) for e in a] == [(e.question, e.answer) for e in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b, strict=True))


def test_ocr_eval_uses_held_out_words_only() -> None:
    held = set(text_images.held_out_words())
    for split in ("ocr", "ocr_unseen_fonts"):
        assert all(e.text in held for e in load_eval_split(split, 30))


def test_eval_scenes_differ_from_training_batches() -> None:
    # same index, different namespace: the first held-out scene is not the first training scene
    builder = BatchBuilder(Tokenizer.default(), seed=0, sizes=BatchSizes(1, 0, 0, 1), easy_vqa=None)
    batch = builder.build(0)
    ev = load_eval_split("captioning", 1)[0]
    from mobile_multimodal.model.preprocess import scene_tensor

    assert not np.allclose(batch.images[0].numpy(), scene_tensor(ev.image).numpy())


def test_easy_vqa_test_split_is_the_published_one() -> None:
    ex = load_eval_split("easy_vqa", None)
    assert len(ex) == 9673
    assert ex[0].image.size == (64, 64)


def test_unknown_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_eval_split("nope")


def test_every_canary_and_evaluation_scene_is_listed_as_held_out() -> None:
    from mobile_multimodal.training.canary_set import CanarySet

    held = splits.held_out_scenes()
    canary = CanarySet.build(32)
    for task in ("captioning", "vqa", "retrieval"):
        assert all(e.scene in held for e in canary.examples[task])
        assert all(e.scene in held for e in load_eval_split(task, 50))


def test_a_training_batch_never_holds_a_held_out_scene(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator is made to draw a canary scene first: the batch builder draws again."""
    from mobile_multimodal.data import scenes
    from mobile_multimodal.model.preprocess import scene_tensor

    canary_scene = load_eval_split("captioning", 1)[0].scene
    assert canary_scene is not None
    draws: list[scenes.Scene] = []
    real = scenes.sample_scene

    def first_a_canary_scene(rng: np.random.Generator) -> scenes.Scene:
        scene = canary_scene if not draws else real(rng)
        draws.append(scene)
        return scene

    held = splits.held_out_scenes()  # listed (cached) before the generator is rigged
    monkeypatch.setattr(scenes, "sample_scene", first_a_canary_scene)
    builder = BatchBuilder(Tokenizer.default(), seed=0, sizes=BatchSizes(1, 1, 0, 1), easy_vqa=None)
    batch = builder.build(0)
    assert draws[0] == canary_scene and len(draws) == 3  # drawn again, then the VQA row's scene
    held_out_pixels = scene_tensor(scenes.render_scene(canary_scene)).numpy()
    assert not any(np.allclose(image.numpy(), held_out_pixels) for image in batch.images)
    assert draws[1] not in held


def test_only_evaluation_side_modules_read_the_held_out_splits() -> None:
    """Training, distillation and quantization calibration never call load_eval_split."""
    import ast
    from pathlib import Path

    src = Path(splits.__file__).resolve().parents[1]
    readers = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            imports = node.names if isinstance(node, ast.ImportFrom) else []
            if getattr(node, "module", None) == "mobile_multimodal.data.splits" and any(
                a.name == "load_eval_split" for a in imports
            ):
                readers.add(path.relative_to(src).as_posix())
    assert readers == {
        "training/evaluate.py",
        "training/canary_set.py",
        "training/domain_calibration.py",  # fits the out-of-domain threshold; trains no weight
        "export/latency.py",
        "export/genai.py",
    }, readers
