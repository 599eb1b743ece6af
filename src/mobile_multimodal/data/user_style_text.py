"""Text lines for the user-style split: mixed case, digits and punctuation, many looks.

Not the training renderer (``text_images.py``): own fonts list (seen and unseen in training, and
weights neither uses), sizes 12-64 px, paddings from tight to loose on each side, light on dark
as often as dark on light, flat/gradient/textured backgrounds, slight rotation and JPEG. The
words are the dictionary's held-out words (``text_images.held_out_words``: never in training).

Example::

    line = sample_line(np.random.default_rng(3), mixed=True)
    line.text, line.kind       # ('Price: 41.07', 'price')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mobile_multimodal.data.text_images import CorpusResourceError, held_out_words
from mobile_multimodal.data.user_style_draw import background, color_distance, degrade

FONT_ROOT = Path("/usr/share/fonts")
USER_FONTS = (
    "truetype/dejavu/DejaVuSans.ttf",
    "truetype/dejavu/DejaVuSerif-Bold.ttf",
    "truetype/liberation/LiberationSans-Regular.ttf",
    "truetype/liberation/LiberationSerif-Bold.ttf",
    "truetype/liberation/LiberationMono-Bold.ttf",
    "truetype/freefont/FreeSans.ttf",
    "truetype/freefont/FreeSerifItalic.ttf",
    "opentype/urw-base35/NimbusSans-Regular.otf",
    "opentype/urw-base35/URWGothic-Book.otf",
    "opentype/urw-base35/C059-Roman.otf",
    "truetype/lato/Lato-Regular.ttf",
    "truetype/lato/Lato-Medium.ttf",
    "truetype/lato/Lato-Semibold.ttf",
    "truetype/crosextra/Carlito-Regular.ttf",
    "truetype/crosextra/Carlito-Bold.ttf",
    "truetype/crosextra/Caladea-Italic.ttf",
    "truetype/open-sans/OpenSans-Regular.ttf",
    "truetype/open-sans/OpenSans-Semibold.ttf",
    "truetype/roboto/unhinted/RobotoTTF/Roboto-Regular.ttf",
    "truetype/roboto/unhinted/RobotoTTF/Roboto-Medium.ttf",
    "truetype/roboto/unhinted/RobotoCondensed-Regular.ttf",
    "truetype/noto/NotoSansMono-Regular.ttf",
    "truetype/liberation/LiberationSansNarrow-Bold.ttf",
    "truetype/dejavu/DejaVuSansMono.ttf",
)
MIXED_KINDS = ("capitalized", "upper", "price", "street", "greeting", "number", "phone", "time", "sentence")
MIN_CONTRAST = 120.0


@dataclass(frozen=True)
class Line:
    image: Image.Image
    text: str
    kind: str
    meta: dict[str, object]


@lru_cache(maxsize=256)
def _font(rel: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_ROOT / rel
    if not path.exists():
        raise CorpusResourceError(f"font {path} is missing: run `bash scripts/install_system_deps.sh`")
    return ImageFont.truetype(str(path), size)


def _word(rng: np.random.Generator, lo: int = 3, hi: int = 9) -> str:
    words = [w for w in _short_words() if lo <= len(w) <= hi]
    return words[int(rng.integers(len(words)))]


@lru_cache(maxsize=1)
def _short_words() -> tuple[str, ...]:
    return tuple(w for w in held_out_words() if len(w) <= 10)


def mixed_text(rng: np.random.Generator) -> tuple[str, str]:
    """(text, kind): one of the line kinds a user photographs, in mixed case with digits and
    punctuation, at most 18 characters."""
    kind = str(rng.choice(MIXED_KINDS))
    cap = _word(rng, 3, 8).capitalize()

    def d(n: int) -> str:
        return "".join(str(int(x)) for x in rng.integers(0, 10, size=n).tolist())

    if kind == "capitalized":
        text = cap
    elif kind == "upper":
        text = _word(rng, 3, 8).upper()
    elif kind == "price":
        text = str(
            rng.choice(
                [f"Price: {int(rng.integers(1, 100))}.{d(2)}", f"${int(rng.integers(1, 1000))}.{d(2)}"]
            )
        )
    elif kind == "street":
        text = f"{cap} {rng.choice(['St.', 'Ave.', 'Rd.', 'Blvd.'])}"
    elif kind == "greeting":
        text = f"{rng.choice(['Hello', 'Hi', 'Dear', 'Thanks'])}, {_word(rng, 3, 6).capitalize()}!"
    elif kind == "number":
        text = f"{rng.choice(['No.', 'Room', 'Gate', 'Item'])} {int(rng.integers(1, 1000))}"
    elif kind == "phone":
        text = f"{d(3)}-{d(4)}"
    elif kind == "time":
        text = f"{int(rng.integers(1, 13))}:{int(rng.integers(0, 60)):02d} {rng.choice(['AM', 'PM'])}"
    else:
        text = f"{cap} {_word(rng, 2, 6)}."
    return text, kind


def _colors(rng: np.random.Generator, light_on_dark: bool) -> tuple[tuple[int, int, int], str]:
    """Text colour (any hue, light or dark) and a background kind on the other side."""
    while True:
        level = (150, 256) if light_on_dark else (0, 110)
        r, g, b = (int(x) for x in rng.integers(*level, size=3).tolist())
        fg = (r, g, b)
        if light_on_dark or color_distance(fg, (235, 235, 235)) >= MIN_CONTRAST:
            return fg, "dark" if light_on_dark else "light"


def render_line(text: str, rng: np.random.Generator) -> tuple[Image.Image, dict[str, object]]:
    font_rel = USER_FONTS[int(rng.integers(len(USER_FONTS)))]
    size = int(rng.integers(12, 65))
    font = _font(font_rel, size)
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    tw, th = right - left, bottom - top
    pads = [round(th * float(rng.uniform(0.05, 0.6))) for _ in range(4)]  # left, top, right, bottom
    width, height = tw + pads[0] + pads[2], th + pads[1] + pads[3]
    light_on_dark = bool(rng.random() < 0.5)
    fg, bg_kind = _colors(rng, light_on_dark)
    textured = rng.random() < 0.35
    while True:
        canvas = background(rng, width, height, "textured" if textured else bg_kind)
        mean = np.asarray(canvas).reshape(-1, 3).mean(0)
        if color_distance(fg, mean) >= MIN_CONTRAST:
            break
        textured = False  # a texture on the wrong side of the text's brightness: fall back to flat
    ImageDraw.Draw(canvas).text((pads[0] - left, pads[1] - top), text, font=font, fill=fg)
    meta: dict[str, object] = {"font": font_rel, "size": size, "light_on_dark": light_on_dark}
    return degrade(canvas, rng, max_rotation=2.0), meta


def sample_line(rng: np.random.Generator, mixed: bool) -> Line:
    if mixed:
        text, kind = mixed_text(rng)
    else:
        text, kind = _word(rng, 2, 12), "lowercase"
    image, meta = render_line(text, rng)
    return Line(image=image, text=text, kind=kind, meta=meta)
