"""The user-style evaluation split: shapes and text drawn the way a user's own images come.

Independent of the training generator (drawing in ``user_style_draw.py``): canvases of 64 to
1024 px of any aspect near square, 1-3 shapes each 5-50% of the canvas's short side at any
position, light, dark, gradient and textured backgrounds, JPEG at several qualities and a slight
rotation; text lines in mixed case with digits and punctuation, at many sizes, paddings and
colours, light on dark as often as dark on light, in 24 fonts (seen and unseen in training).

Four tasks: ``user_captioning`` (does the caption name each object's colour and shape),
``user_vqa`` (questions whose answer does not depend on a 3x3 grid: colour, shape, presence,
count), ``user_ocr`` (lowercase held-out words) and ``user_ocr_mixed`` (mixed case, digits and
punctuation: "Price: 19.99", "Main St.").

Held out from training: seeds come from namespace 2 (training draws from 0, the generator's
held-out splits from 1) and no training module imports this one (tests/data checks both).
Deterministic: example ``i`` of a task is a pure function of (namespace, task, i).

Example::

    examples = load_user_split("user_vqa", 300)
    examples[0].question, examples[0].answer     # ('what color is the star ?', 'teal')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mobile_multimodal.data.user_style_draw import (
    PALETTE,
    background,
    color_distance,
    degrade,
    draw_shape,
    jitter,
)
from mobile_multimodal.data.user_style_text import sample_line
from mobile_multimodal.data.vocabulary import NUMBER_WORDS, SHAPES

USER_NAMESPACE = 2
USER_TASKS = ("user_captioning", "user_vqa", "user_ocr", "user_ocr_mixed")
USER_SIZES = {"user_captioning": 300, "user_vqa": 300, "user_ocr": 300, "user_ocr_mixed": 300}
_CODES = {name: i for i, name in enumerate(USER_TASKS)}
MIN_CANVAS, MAX_CANVAS = 64, 1024
MIN_EXTENT, MAX_EXTENT = 0.05, 0.50  # of the canvas's short side
MIN_CONTRAST = 110.0  # RGB distance between a shape's colour and the background under it


@dataclass(frozen=True)
class UserObject:
    shape: str
    color: str
    center: tuple[float, float]
    extent: float  # px, long side of its bounding box


@dataclass(frozen=True)
class UserExample:
    image: Image.Image
    objects: tuple[UserObject, ...] = ()
    question: str = ""
    answer: str = ""
    kind: str = ""  # question kind, or OCR line kind
    text: str = ""  # OCR target
    meta: dict[str, object] = field(default_factory=dict)


def user_rng(task: str, index: int) -> np.random.Generator:
    return np.random.default_rng([USER_NAMESPACE, _CODES[task], index])


def _canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    side = float(np.exp(rng.uniform(np.log(MIN_CANVAS), np.log(MAX_CANVAS))))
    aspect = float(rng.uniform(0.8, 1.25))
    w = int(np.clip(round(side * np.sqrt(aspect)), MIN_CANVAS, MAX_CANVAS))
    h = int(np.clip(round(side / np.sqrt(aspect)), MIN_CANVAS, MAX_CANVAS))
    return w, h


def _place(
    rng: np.random.Generator, w: int, h: int, extents: list[float]
) -> list[tuple[float, float]] | None:
    """Centres with every shape inside the canvas (a small margin for the rotation) and no two
    bounding circles overlapping; None when 200 tries found no layout."""
    margin = 0.03 * min(w, h)
    centres: list[tuple[float, float]] = []
    for e in extents:
        for _ in range(200):
            r = e / 2
            if w - 2 * (r + margin) <= 0 or h - 2 * (r + margin) <= 0:
                return None
            c = (
                float(rng.uniform(r + margin, w - r - margin)),
                float(rng.uniform(r + margin, h - r - margin)),
            )
            if all(
                np.hypot(c[0] - o[0], c[1] - o[1]) > (e + oe) / 2 + 2
                for o, oe in zip(centres, extents, strict=False)
            ):
                centres.append(c)
                break
        else:
            return None
    return centres


def sample_user_scene(
    rng: np.random.Generator,
) -> tuple[Image.Image, tuple[UserObject, ...], dict[str, object]]:
    """One drawn scene of 1-3 shapes with its objects, before degradation."""
    while True:
        w, h = _canvas_size(rng)
        n = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        short = min(w, h)
        extents = sorted((float(rng.uniform(MIN_EXTENT, MAX_EXTENT)) * short for _ in range(n)), reverse=True)
        centres = _place(rng, w, h, extents)
        if centres is None:
            continue
        kind = str(rng.choice(("light", "dark", "gradient", "textured")))
        canvas = background(rng, w, h, kind)
        pixels = np.asarray(canvas)
        objects = []
        for c, e in zip(centres, extents, strict=True):
            under = pixels[int(c[1]), int(c[0])]
            colors = [name for name, rgb in PALETTE.items() if color_distance(rgb, under) >= MIN_CONTRAST]
            color = str(rng.choice(colors))
            shape = str(rng.choice(SHAPES))
            draw_shape(canvas, shape, c, e, jitter(PALETTE[color], rng), rng)
            objects.append(UserObject(shape=shape, color=color, center=c, extent=e))
        return canvas, tuple(objects), {"size": (w, h), "background": kind}


def _question(objects: tuple[UserObject, ...], rng: np.random.Generator) -> tuple[str, str, str]:
    """A question whose answer is defined wherever the shapes are: colour of a unique shape,
    shape of a unique colour, presence of a colour+shape, number of shapes."""
    by_shape = [o for o in objects if sum(x.shape == o.shape for x in objects) == 1]
    by_color = [o for o in objects if sum(x.color == o.color for x in objects) == 1]
    while True:
        kind = int(rng.integers(4))
        if kind == 0 and by_shape:
            o = by_shape[int(rng.integers(len(by_shape)))]
            return f"what color is the {o.shape} ?", o.color, "color"
        if kind == 1 and by_color:
            o = by_color[int(rng.integers(len(by_color)))]
            return f"what shape is the {o.color} object ?", o.shape, "shape"
        if kind == 2:
            if rng.random() < 0.5:
                o = objects[int(rng.integers(len(objects)))]
                color, shape = o.color, o.shape
            else:
                color, shape = str(rng.choice(list(PALETTE))), str(rng.choice(SHAPES))
            present = any(o.color == color and o.shape == shape for o in objects)
            return f"is there a {color} {shape} ?", "yes" if present else "no", "presence"
        if kind == 3:
            return "how many shapes are there ?", NUMBER_WORDS[len(objects)], "count"


def user_example(task: str, index: int) -> UserExample:
    """Example ``index`` of a user-style task (a pure function of the two)."""
    if task not in _CODES:
        raise ValueError(f"unknown user-style task {task!r}; choose one of {USER_TASKS}")
    rng = user_rng(task, index)
    if task in ("user_ocr", "user_ocr_mixed"):
        line = sample_line(rng, mixed=task == "user_ocr_mixed")
        return UserExample(image=line.image, text=line.text, kind=line.kind, meta=line.meta)
    canvas, objects, meta = sample_user_scene(rng)
    question, answer, kind = _question(objects, rng) if task == "user_vqa" else ("", "", "")
    return UserExample(
        image=degrade(canvas, rng), objects=objects, question=question, answer=answer, kind=kind, meta=meta
    )


def load_user_split(task: str, n: int | None = None) -> list[UserExample]:
    """The first ``n`` examples of a user-style task (``USER_SIZES[task]`` when None)."""
    if task not in _CODES:
        raise ValueError(f"unknown user-style task {task!r}; choose one of {USER_TASKS}")
    count = USER_SIZES[task] if n is None else n
    return [user_example(task, i) for i in range(count)]
