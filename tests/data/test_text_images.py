from __future__ import annotations

import numpy as np

from mobile_multimodal.data import text_images
from mobile_multimodal.data.vocabulary import OCR_CHARSET


def test_font_sets_are_disjoint_and_large_enough() -> None:
    assert len(text_images.TRAIN_FONTS) >= 20
    assert not set(text_images.TRAIN_FONTS) & set(text_images.UNSEEN_FONTS)
    for font in (*text_images.TRAIN_FONTS, *text_images.UNSEEN_FONTS):
        assert text_images._font_path(font).exists()


def test_held_out_words_never_appear_in_training_words() -> None:
    train, held = set(text_images.train_words()), set(text_images.held_out_words())
    assert not train & held
    assert len(held) > 1000 and len(train) > 10 * len(held) * 0.8


def test_rendered_text_is_deterministic_and_in_charset() -> None:
    a = text_images.sample_text_image(
        np.random.default_rng(9), text_images.TRAIN_FONTS, text_images.train_words()
    )
    b = text_images.sample_text_image(
        np.random.default_rng(9), text_images.TRAIN_FONTS, text_images.train_words()
    )
    assert a.text == b.text and a.font == b.font
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert set(a.text) <= set(OCR_CHARSET)
    assert a.image.height >= 18


def test_training_mix_includes_random_strings() -> None:
    rng = np.random.default_rng(0)
    words = set(text_images.train_words())
    texts = [text_images.sample_text(rng, text_images.train_words()) for _ in range(400)]
    non_words = [t for t in texts if t not in words and " " not in t]
    assert 0.15 < len(non_words) / len(texts) < 0.4
