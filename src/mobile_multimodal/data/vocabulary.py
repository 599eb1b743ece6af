"""The closed world the scene corpus draws from: colours, shapes, sizes and positions.

Colours and the circle/rectangle/triangle shapes are those of easy-VQA, so that the scene
corpus and the easy-VQA training split teach the same words.
"""

from __future__ import annotations

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 20),
    "teal": (0, 140, 140),
    "brown": (130, 80, 30),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "rectangle", "triangle", "star")
SIZES = ("small", "large")
# 3x3 grid of cells; the phrase used in captions, answers and questions.
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 3

# Characters the OCR head reads. Lowercase letters, digits and the space of short lines: the
# charset of the v1/v2 models (the bundled one), which read text case-folded.
OCR_CHARSET = " abcdefghijklmnopqrstuvwxyz0123456789"
OCR_MAX_CHARS = 16
# Printable ASCII (space, then "!" .. "~": upper and lower case, digits, punctuation; 95 chars):
# the charset of models trained for users' own text (training preset "user-style"), read as
# written, never case-folded; lines up to 32 characters.
OCR_CHARSET_ASCII = "".join(chr(c) for c in range(32, 127))
OCR_MAX_CHARS_ASCII = 32
CHARSETS = {"lowercase": OCR_CHARSET, "ascii": OCR_CHARSET_ASCII}
