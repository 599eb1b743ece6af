"""Rendered text lines for OCR: words, random character strings and short two-word lines.

Fonts come from Debian font packages (installed by scripts/install_system_deps.sh). Two
disjoint font sets: TRAIN_FONTS are used for training and the `ocr` split; UNSEEN_FONTS never
appear in training and form the `ocr_unseen_fonts` split. Held-out words are chosen by a hash
of the word, so training never sees an evaluation word.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mobile_multimodal.data.vocabulary import OCR_CHARSET, OCR_MAX_CHARS

FONT_ROOT = Path("/usr/share/fonts")
TRAIN_FONTS = (
    "truetype/dejavu/DejaVuSans.ttf",
    "truetype/dejavu/DejaVuSans-Bold.ttf",
    "truetype/dejavu/DejaVuSans-Oblique.ttf",
    "truetype/dejavu/DejaVuSansCondensed.ttf",
    "truetype/dejavu/DejaVuSerif.ttf",
    "truetype/dejavu/DejaVuSerif-Bold.ttf",
    "truetype/dejavu/DejaVuSerif-Italic.ttf",
    "truetype/dejavu/DejaVuSansMono.ttf",
    "truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "truetype/liberation/LiberationSans-Regular.ttf",
    "truetype/liberation/LiberationSans-Bold.ttf",
    "truetype/liberation/LiberationSerif-Regular.ttf",
    "truetype/liberation/LiberationSerif-Italic.ttf",
    "truetype/liberation/LiberationMono-Regular.ttf",
    "truetype/liberation/LiberationSansNarrow-Regular.ttf",
    "truetype/freefont/FreeSans.ttf",
    "truetype/freefont/FreeSansBold.ttf",
    "truetype/freefont/FreeSerif.ttf",
    "truetype/freefont/FreeSerifItalic.ttf",
    "truetype/freefont/FreeMono.ttf",
    "truetype/freefont/FreeMonoBold.ttf",
    "opentype/urw-base35/NimbusSans-Regular.otf",
    "opentype/urw-base35/NimbusRoman-Regular.otf",
    "opentype/urw-base35/NimbusMonoPS-Regular.otf",
    "opentype/urw-base35/P052-Roman.otf",
    "opentype/urw-base35/URWBookman-Light.otf",
    "opentype/urw-base35/URWGothic-Book.otf",
    "opentype/urw-base35/C059-Roman.otf",
)
# More families for data v3's user-style lines only (data/training_data.py): users' text comes in
# fonts we never drew, so the reader should see more type designs than TRAIN_FONTS' (measured so
# far: within noise on the user-style split, README "Three retrainings"). None is in UNSEEN_FONTS
# or the user-style split's fonts (tested), and the `ocr` split and plain training lines stay on
# TRAIN_FONTS. Debian packages in scripts/install_system_deps.sh.
EXTRA_TRAIN_FONTS = (
    "opentype/cantarell/Cantarell-Regular.otf",
    "opentype/cantarell/Cantarell-Bold.otf",
    "opentype/league-spartan/LeagueSpartan-Regular.otf",
    "opentype/league-spartan/LeagueSpartan-Bold.otf",
    "opentype/linux-libertine/LinBiolinum_R.otf",
    "opentype/linux-libertine/LinBiolinum_RB.otf",
    "opentype/linux-libertine/LinBiolinum_RI.otf",
    "opentype/linux-libertine/LinLibertine_R.otf",
    "opentype/linux-libertine/LinLibertine_RB.otf",
    "opentype/linux-libertine/LinLibertine_RI.otf",
    "truetype/comfortaa/Comfortaa-Regular.ttf",
    "truetype/comfortaa/Comfortaa-Bold.ttf",
    "truetype/firacode/FiraCode-Regular.ttf",
    "truetype/firacode/FiraCode-Bold.ttf",
    "truetype/hack/Hack-Regular.ttf",
    "truetype/hack/Hack-Italic.ttf",
    "truetype/inconsolata/Inconsolata.otf",
    "truetype/jetbrains-mono/JetBrainsMono-Regular.ttf",
    "truetype/jetbrains-mono/JetBrainsMono-Bold.ttf",
    "truetype/jetbrains-mono/JetBrainsMono-Italic.ttf",
    "truetype/oxygen/Oxygen-Sans.ttf",
    "truetype/oxygen/Oxygen-Sans-Bold.ttf",
    "truetype/oxygen/OxygenMono-Regular.ttf",
    "truetype/quicksand/Quicksand-Regular.ttf",
    "truetype/quicksand/Quicksand-Bold.ttf",
)
UNSEEN_FONTS = (
    "truetype/lato/Lato-Regular.ttf",
    "truetype/lato/Lato-Bold.ttf",
    "truetype/lato/Lato-Italic.ttf",
    "truetype/crosextra/Carlito-Regular.ttf",
    "truetype/crosextra/Caladea-Regular.ttf",
    "truetype/open-sans/OpenSans-Regular.ttf",
    "truetype/open-sans/OpenSans-Bold.ttf",
    "truetype/roboto/unhinted/RobotoTTF/Roboto-Regular.ttf",
    "truetype/roboto/unhinted/RobotoCondensed-Regular.ttf",
    "truetype/noto/NotoSansMono-Regular.ttf",
)
WORDS_FILE = Path("/usr/share/dict/words")
HELD_OUT_PERCENT = 10  # of the word list, by hash: never used in training

OCR_HEIGHT = 32
OCR_WIDTH = 256


class CorpusResourceError(RuntimeError):
    """A font or word list the corpus needs is not installed."""


@dataclass(frozen=True)
class TextSample:
    image: Image.Image
    text: str
    font: str


def _font_path(rel: str) -> Path:
    path = FONT_ROOT / rel
    if not path.exists():
        raise CorpusResourceError(
            f"font {path} is missing: run `bash scripts/install_system_deps.sh` (Debian font packages)"
        )
    return path


@lru_cache(maxsize=512)
def load_font(rel: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_path(rel)), size)


def _is_held_out(word: str) -> bool:
    return int(hashlib.sha1(word.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


@lru_cache(maxsize=1)
def _word_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not WORDS_FILE.exists():
        raise CorpusResourceError(f"{WORDS_FILE} is missing: install the Debian package `wamerican`")
    allowed = set(OCR_CHARSET) - {" "}
    words = sorted(
        {
            w.strip()
            for w in WORDS_FILE.read_text(encoding="utf-8", errors="ignore").split()
            if 2 <= len(w.strip()) <= 12 and set(w.strip()) <= allowed
        }
    )
    train = tuple(w for w in words if not _is_held_out(w))
    held = tuple(w for w in words if _is_held_out(w))
    return train, held


def train_words() -> tuple[str, ...]:
    return _word_lists()[0]


def held_out_words() -> tuple[str, ...]:
    return _word_lists()[1]


TRAIN_MIX = (0.6, 0.25, 0.15)
WORDS_ONLY = (1.0, 0.0, 0.0)


def sample_text(
    rng: np.random.Generator, words: tuple[str, ...], mix: tuple[float, float, float] = TRAIN_MIX
) -> str:
    """A word, a random character string or a short two-word line, in the proportions of `mix`.
    Random strings make the reader learn characters rather than guess frequent words."""
    r = rng.random()
    if r < mix[0]:
        return words[int(rng.integers(len(words)))]
    if r < mix[0] + mix[1]:
        n = int(rng.integers(2, 11))
        alphabet = OCR_CHARSET[1:]
        return "".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=n))
    while True:
        line = f"{words[int(rng.integers(len(words)))]} {words[int(rng.integers(len(words)))]}"
        if len(line) <= OCR_MAX_CHARS:
            return line


def _contrasting_colors(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    while True:
        fg = tuple(int(x) for x in rng.integers(0, 256, size=3))
        bg = tuple(int(x) for x in rng.integers(0, 256, size=3))
        if abs(sum(fg) - sum(bg)) / 3 > 90:
            return fg, bg  # type: ignore[return-value]


def render_text(text: str, font: str, rng: np.random.Generator) -> Image.Image:
    """Render one line with random colours, margins, rotation, blur and noise, as a free-size RGB
    image (callers normalise it with `model.preprocess.text_line_tensor`)."""
    size = int(rng.integers(18, 30))
    pil_font = load_font(font, size)
    fg, bg = _contrasting_colors(rng)
    left, top, right, bottom = (int(v) for v in pil_font.getbbox(text))
    mx, my = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    img = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=pil_font, fill=fg)
    angle = float(rng.uniform(-3, 3))
    if abs(angle) > 0.5:
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=bg)
    blur = float(rng.choice([0.0, 0.0, 0.5, 0.8]))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, float(rng.uniform(0, 12)), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def sample_text_image(
    rng: np.random.Generator,
    fonts: tuple[str, ...],
    words: tuple[str, ...],
    mix: tuple[float, float, float] = TRAIN_MIX,
) -> TextSample:
    text = sample_text(rng, words, mix)
    font = fonts[int(rng.integers(len(fonts)))]
    return TextSample(image=render_text(text, font, rng), text=text, font=font)
