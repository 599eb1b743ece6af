"""Training text lines as users' own text comes (data version ``procedural-v2``).

Mixed case, digits and punctuation from the printable ASCII charset (``OCR_CHARSET_ASCII``),
lines of 1 to 32 characters: training words in every case style, short phrases with
punctuation, numbers as people write them (prices, times, phone numbers, dates, percentages),
labels with values, and random strings over the whole charset so that every glyph is learnt.
Rendered in the training fonts at 10-64 px with tight to loose paddings on each side, dark on
light or light on dark (about half each), over flat, gradient or textured backgrounds, with a
slight rotation, sometimes blur, noise and JPEG.

Words are ``text_images.train_words()``: the held-out words (by hash) that the evaluation
splits, the user-style split included, draw from never appear here, in any case.

Example::

    rng = np.random.default_rng(0)
    line = sample_styled_line(rng, text_images.TRAIN_FONTS, text_images.train_words())
    line.text              # e.g. 'Total: $41.07'
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mobile_multimodal.data.scene_styles import draw_background
from mobile_multimodal.data.text_images import TextSample, held_out_words, load_font
from mobile_multimodal.data.vocabulary import OCR_CHARSET_ASCII, OCR_MAX_CHARS_ASCII

FONT_PX = (10, 64)
KINDS = ("word", "phrase", "number", "label", "random")
KIND_WEIGHTS = (0.3, 0.3, 0.15, 0.1, 0.15)
_PUNCT_AFTER = (".", ",", "!", "?", ":", ";")
_LABELS = (
    "Total",
    "Tel",
    "Fax",
    "Date",
    "Time",
    "Ref",
    "ID",
    "Qty",
    "Page",
    "Order",
    "Seat",
    "Unit",
    "Lot",
    "Box",
)
MIN_CONTRAST = 110.0  # RGB distance between the text colour and the background's mean
MIN_BRIGHTNESS_GAP = 80.0  # and between their mean brightness (a hue change alone is not enough)


@lru_cache(maxsize=1)
def _training_labels() -> tuple[str, ...]:
    """The labels whose word is not a held-out one ("Total" is: the evaluation may use it)."""
    held = set(held_out_words())
    return tuple(label for label in _LABELS if label.strip(".").lower() not in held)


def _case(word: str, rng: np.random.Generator, style: int | None = None) -> str:
    style = int(rng.choice(4, p=[0.3, 0.4, 0.2, 0.1])) if style is None else style
    if style == 0:
        return word
    if style == 1:
        return word[:1].upper() + word[1:]
    if style == 2:
        return word.upper()
    return "".join(c.upper() if rng.random() < 0.5 else c for c in word)


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, size=n))


def _number(rng: np.random.Generator) -> str:
    form = int(rng.integers(8))
    if form == 0:
        return str(int(rng.integers(0, 100000)))
    if form == 1:
        return f"{int(rng.integers(0, 1000))}.{_digits(rng, 2)}"
    if form == 2:
        return f"{'$' if rng.random() < 0.8 else '#'}{int(rng.integers(1, 10000))}.{_digits(rng, 2)}"
    if form == 3:
        return f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    if form == 4:
        return f"({_digits(rng, 3)}) {_digits(rng, 3)}-{_digits(rng, 4)}"
    if form == 5:
        return f"{int(rng.integers(1, 32))}/{int(rng.integers(1, 13))}/{int(rng.integers(1990, 2040))}"
    if form == 6:
        return f"{int(rng.integers(0, 101))}%"
    return f"{_digits(rng, 3)}-{_digits(rng, 4)}"


def _fit(text: str, rng: np.random.Generator) -> str:
    """``text`` cut at a word boundary (or hard) to at most OCR_MAX_CHARS_ASCII characters."""
    if len(text) <= OCR_MAX_CHARS_ASCII:
        return text
    cut = text[:OCR_MAX_CHARS_ASCII]
    return cut.rsplit(" ", 1)[0] if " " in cut and rng.random() < 0.8 else cut.strip()


def sample_styled_text(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    """A line of 1..32 printable ASCII characters (never with leading/trailing spaces)."""
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]

    def word() -> str:
        return words[int(rng.integers(len(words)))]

    if kind == "word":
        text = _case(word(), rng)
        if rng.random() < 0.25:
            text += _PUNCT_AFTER[int(rng.integers(len(_PUNCT_AFTER)))]
    elif kind == "phrase":
        style = int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))  # lower, Capitalised/sentence, UPPER, mixed
        parts = []
        for i in range(int(rng.integers(2, 7))):
            w = _number(rng) if rng.random() < 0.12 else _case(word(), rng, style if i else max(style, 1))
            if rng.random() < 0.15:
                w += _PUNCT_AFTER[int(rng.integers(len(_PUNCT_AFTER)))]
            parts.append(w)
        text = " ".join(parts)
        if rng.random() < 0.3:
            text += _PUNCT_AFTER[int(rng.integers(3))]
    elif kind == "number":
        text = _number(rng)
    elif kind == "label":
        labels = _training_labels()
        text = f"{labels[int(rng.integers(len(labels)))]}{':' if rng.random() < 0.7 else ''} {_number(rng)}"
    else:
        n = int(rng.integers(1, OCR_MAX_CHARS_ASCII + 1))
        alphabet = OCR_CHARSET_ASCII
        text = "".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=n))
        text = " ".join(text.split())  # no double, leading or trailing spaces
        if not text:
            text = alphabet[1 + int(rng.integers(len(alphabet) - 1))]
    return _fit(text, rng)


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], str]:
    """Text colour and the background kind on the other side of the brightness range."""
    light_on_dark = rng.random() < 0.5
    lo, hi = (150, 256) if light_on_dark else (0, 115)
    fg = tuple(int(v) for v in rng.integers(lo, hi, size=3))
    return fg, "dark" if light_on_dark else "light"  # type: ignore[return-value]


def render_styled_line(text: str, font: str, rng: np.random.Generator) -> Image.Image:
    """``text`` in ``font`` at a random size, padding, colour, background and degradation."""
    size = round(math.exp(float(rng.uniform(math.log(FONT_PX[0]), math.log(FONT_PX[1])))))
    pil_font = load_font(font, size)
    left, top, right, bottom = (int(v) for v in pil_font.getbbox(text))
    th = max(1, bottom - top)
    pads = [round(th * float(rng.uniform(0.02, 0.7))) for _ in range(4)]
    width, height = max(1, right - left) + pads[0] + pads[2], th + pads[1] + pads[3]
    fg, side = _colours(rng)
    kind = ("gradient", "textured", side)[int(rng.choice(3, p=[0.2, 0.25, 0.55]))]
    for _ in range(8):
        pixels = draw_background(rng, width, height, kind, tone=side)
        mean = pixels.reshape(-1, 3).mean(0)
        ink = np.asarray(fg, np.float32)
        if (
            float(np.linalg.norm(mean - ink)) >= MIN_CONTRAST
            and abs(float(mean.mean() - ink.mean())) >= MIN_BRIGHTNESS_GAP
        ):
            break
        kind = side  # a gradient or texture too close to the text's colour: a flat background
    img = Image.fromarray(pixels.astype(np.uint8))
    ImageDraw.Draw(img).text((pads[0] - left, pads[1] - top), text, font=pil_font, fill=fg)
    angle = float(rng.uniform(-2.5, 2.5))
    if abs(angle) > 0.3:
        edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        fill = tuple(int(v) for v in np.median(edge, axis=0))
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=fill)
    blur = float(rng.choice([0.0, 0.0, 0.0, 0.4, 0.8]))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur * size / 24))
    if rng.random() < 0.5:
        arr = np.asarray(img, np.float32) + rng.normal(
            0, float(rng.uniform(1, 10)), size=(img.height, img.width, 3)
        )
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(25, 96)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def sample_styled_line(
    rng: np.random.Generator, fonts: tuple[str, ...], words: tuple[str, ...]
) -> TextSample:
    text = sample_styled_text(rng, words)
    font = fonts[int(rng.integers(len(fonts)))]
    return TextSample(image=render_styled_line(text, font, rng), text=text, font=font)
