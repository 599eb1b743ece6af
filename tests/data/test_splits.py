from __future__ import annotations

import numpy as np
import pytest

from mobile_multimodal.data import text_images
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
