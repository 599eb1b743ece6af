"""Everyday text lines: the short conventional lines people photograph most (signs, receipts,
notes, tickets), as text only.

``text_styles.sample_styled_text`` draws words, phrases and numbers with punctuation put
anywhere; it never writes a clock time with AM/PM, a salutation with its comma or an address
with its abbreviation, so a character language model fitted on it cannot tell "10:25 PM" from
"10:25 PN" or "Hello, Ann!" from "Hello. Ann!" where the glyphs alone leave it open (issue 18's
mixed-case misses). These lines teach it the conventions: 12-hour times, salutations and
sign-offs, street addresses, numbered places (rooms, gates, seats), prices and sale notices,
opening hours, dates and short sentences.

Words are ``text_images.train_words()`` and the fixed convention words below, less those that
are held-out words (never one, in any case); lines are 1 to ``OCR_MAX_CHARS_ASCII`` characters
of printable ASCII.

Example::

    rng = np.random.default_rng(0)
    sample_everyday_text(rng, text_images.train_words())   # e.g. 'Gate 14', '9:05 PM', 'Hi, Tulip!'
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

from mobile_multimodal.data.text_images import held_out_words
from mobile_multimodal.data.vocabulary import OCR_MAX_CHARS_ASCII

GREETINGS = ("Hello", "Hi", "Hey", "Dear", "Thanks", "Thank you", "Welcome", "Good morning", "Cheers")
SIGN_OFFS = ("Best", "Regards", "Love", "Yours", "Sincerely", "See you")
STREET_TYPES = ("St.", "Ave.", "Rd.", "Blvd.", "Dr.", "Ln.", "Ct.", "Pl.", "Sq.", "Way")
PLACES = ("No.", "Room", "Gate", "Item", "Seat", "Apt.", "Suite", "Floor", "Exit", "Bus", "Table", "Aisle")
MONTHS = ("Jan.", "Feb.", "Mar.", "Apr.", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.", "Dec.")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
PRICE_LABELS = ("Price", "Total", "Now", "Only", "Sale", "Subtotal", "Tax")
KINDS = ("time", "salutation", "address", "place", "price", "hours", "date", "sentence")


@cache
def _allowed(options: tuple[str, ...]) -> tuple[str, ...]:
    """``options`` less those spelling a held-out word ("Total", "Aisle"): the evaluation splits
    may read it, so no training text holds it."""
    held = set(held_out_words())
    return tuple(o for o in options if not set(re.findall("[a-z]+", o.lower())) & held)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    allowed = _allowed(options)
    return allowed[int(rng.integers(len(allowed)))]


def _clock(rng: np.random.Generator) -> str:
    """A 12-hour time as written on signs and receipts: '9:06 AM', '11 PM', '7:30pm'."""
    hour = int(rng.integers(1, 13))
    minute = f":{int(rng.integers(0, 60)):02d}" if rng.random() < 0.85 else ""
    half = _pick(rng, ("AM", "PM"))
    if rng.random() < 0.15:
        return f"{hour}{minute}{half.lower()}"
    return f"{hour}{minute} {half}"


def _name(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    word = words[int(rng.integers(len(words)))]
    return word[:1].upper() + word[1:]


def _amount(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(1, 1000))}.{int(rng.integers(0, 100)):02d}"


def _line(kind: str, rng: np.random.Generator, words: tuple[str, ...]) -> str:
    if kind == "time":
        return _clock(rng) if rng.random() < 0.7 else f"{_pick(rng, DAYS)} {_clock(rng)}"
    if kind == "salutation":
        if rng.random() < 0.2:
            return f"{_pick(rng, SIGN_OFFS)}, {_name(rng, words)}"
        end = _pick(rng, ("!", "!", ",", "."))
        return f"{_pick(rng, GREETINGS)}, {_name(rng, words)}{end}"
    if kind == "address":
        street = f"{_name(rng, words)} {_pick(rng, STREET_TYPES)}"
        return street if rng.random() < 0.5 else f"{int(rng.integers(1, 10000))} {street}"
    if kind == "place":
        return f"{_pick(rng, PLACES)} {int(rng.integers(1, 1000))}"
    if kind == "price":
        form = int(rng.integers(3))
        if form == 0:  # a labelled amount, half of them in dollars
            if rng.random() < 0.5:
                return f"{_pick(rng, PRICE_LABELS)}: ${_amount(rng)}"
            return f"Price: {_amount(rng)}"
        if form == 1:
            return f"${_amount(rng)}"
        return f"{_name(rng, words)} {_amount(rng)}"
    if kind == "hours":
        return f"Open {_clock(rng)} - {_clock(rng)}"
    if kind == "date":
        return f"{_pick(rng, MONTHS)} {int(rng.integers(1, 32))}, {int(rng.integers(1990, 2040))}"
    first = _name(rng, words)
    rest = " ".join(words[int(rng.integers(len(words)))] for _ in range(int(rng.integers(1, 3))))
    return f"{first} {rest}{_pick(rng, ('.', '.', '!', '?'))}"


def sample_everyday_text(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    """One everyday line of at most ``OCR_MAX_CHARS_ASCII`` characters, of a kind drawn evenly."""
    text = _line(KINDS[int(rng.integers(len(KINDS)))], rng, words)
    return text if len(text) <= OCR_MAX_CHARS_ASCII else text[:OCR_MAX_CHARS_ASCII].rstrip()


__all__ = ["KINDS", "sample_everyday_text"]
