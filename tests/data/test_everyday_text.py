"""Everyday text lines (``data/everyday_text.py``): the conventions the OCR language model learns
from, in printable ASCII, deterministic, never a held-out word."""

from __future__ import annotations

import re
import string

import numpy as np

from mobile_multimodal.data import everyday_text, text_images
from mobile_multimodal.data.vocabulary import OCR_CHARSET_ASCII, OCR_MAX_CHARS_ASCII


def _lines(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = text_images.train_words()
    return [everyday_text.sample_everyday_text(rng, words) for _ in range(n)]


def test_lines_are_printable_ascii_of_at_most_32_characters_and_the_same_every_time() -> None:
    lines = _lines(0, 2000)
    assert all(
        1 <= len(t) <= OCR_MAX_CHARS_ASCII and set(t) <= set(OCR_CHARSET_ASCII) and t == t.strip()
        for t in lines
    )
    assert lines == _lines(0, 2000) and lines != _lines(1, 2000)


def test_lines_spell_the_conventions_the_glyphs_leave_open() -> None:
    lines = _lines(0, 2000)

    def share(pattern: str) -> float:
        return sum(bool(re.search(pattern, t)) for t in lines) / len(lines)

    assert share(r"\b\d{1,2}:\d\d (AM|PM)\b") > 0.08  # a 12-hour time: "PM", never "PN"
    assert share(r"^(Hello|Hi|Dear|Thanks), [A-Z][a-z]+[!,.]?$") > 0.03  # a salutation's comma
    assert share(r"^(\d+ )?[A-Z][a-z]+ (St|Ave|Rd|Blvd)\.$") > 0.03  # an address's abbreviation
    assert share(r"^(No\.|Room|Gate|Item|Seat) \d+$") > 0.03
    assert share(r"\$\d+\.\d\d") > 0.05


def test_no_line_holds_a_held_out_word_in_any_case() -> None:
    held = set(text_images.held_out_words())
    assert {"total", "aisle"} <= held  # convention words the generator has to leave out
    for text in _lines(2, 3000):
        for token in text.split():
            core = token.strip(string.punctuation).lower()
            assert not (core.isalpha() and core in held), text
