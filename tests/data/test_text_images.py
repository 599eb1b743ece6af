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


def test_the_extra_training_fonts_are_new_families_with_every_ascii_glyph() -> None:
    """Data v3's extra fonts widen training, so none may be a font a held-out split reads (the
    unseen-fonts split, the user-style split), and each must draw every character the ASCII
    reader is trained on (a missing glyph renders as a box labelled with the character)."""
    from fontTools.ttLib import TTFont

    from mobile_multimodal.data.user_style_text import USER_FONTS
    from mobile_multimodal.data.vocabulary import OCR_CHARSET_ASCII

    extra = set(text_images.EXTRA_TRAIN_FONTS)
    assert len(extra) == len(text_images.EXTRA_TRAIN_FONTS) >= 20
    assert not extra & (set(text_images.TRAIN_FONTS) | set(text_images.UNSEEN_FONTS) | set(USER_FONTS))
    families = {font.split("/")[1] for font in extra}
    held_out = {font.split("/")[1] for font in (*text_images.UNSEEN_FONTS, *USER_FONTS)}
    assert len(families) >= 10 and not families & held_out
    for font in extra:
        cmap = TTFont(str(text_images._font_path(font))).getBestCmap()
        assert not [c for c in OCR_CHARSET_ASCII if ord(c) not in cmap], font
