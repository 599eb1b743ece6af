"""Drawing for the user-style evaluation split: backgrounds, shapes and photo-like degradations.

Written apart from the training generator (``scenes.py``, ``text_images.py``) on purpose: the
split measures how the model does on images drawn by other code, as a user's would be. Nothing
here calls the generator; it shares only the names of the closed world (colour and shape words
from ``vocabulary.py``), with its own RGB values for each colour name.

Example::

    rng = np.random.default_rng(7)
    canvas = background(rng, 300, 200)           # light, dark, gradient or textured
    draw_shape(canvas, "star", (150, 100), 60, (200, 30, 40), rng)
    photo = degrade(canvas, rng)                 # slight rotation, maybe JPEG
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Our own shade of each colour word (the training generator has its own); each drawing jitters it.
PALETTE: dict[str, RGB] = {
    "red": (205, 35, 45),
    "green": (50, 160, 70),
    "blue": (35, 85, 200),
    "yellow": (245, 200, 35),
    "teal": (20, 128, 135),
    "brown": (120, 75, 40),
    "gray": (135, 135, 135),
    "black": (25, 25, 25),
}
BACKGROUND_KINDS = ("light", "dark", "gradient", "textured")
JPEG_QUALITIES = (0, 0, 95, 75, 50, 30)  # 0 = saved losslessly (PNG-like)
MAX_ROTATION_DEG = 3.0


def jitter(rgb: RGB, rng: np.random.Generator, amount: int = 14) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def color_distance(a: RGB | np.ndarray, b: RGB | np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)))


def _light(rng: np.random.Generator) -> RGB:
    base = int(rng.integers(205, 256))
    return jitter((base, base, base), rng, 12)


def _dark(rng: np.random.Generator) -> RGB:
    base = int(rng.integers(0, 60))
    return jitter((base, base, base), rng, 10)


def background(rng: np.random.Generator, width: int, height: int, kind: str | None = None) -> Image.Image:
    """A canvas: flat light or dark, a linear gradient in any direction, or a texture (paper grain,
    stripes or a checkerboard of low contrast) over a light or dark base."""
    kind = kind or str(rng.choice(BACKGROUND_KINDS))
    if kind in ("light", "dark"):
        return Image.new("RGB", (width, height), _light(rng) if kind == "light" else _dark(rng))
    light = bool(rng.random() < 0.6)
    pick = _light if light else _dark
    if kind == "gradient":
        a, b = np.asarray(pick(rng), np.float32), np.asarray(pick(rng), np.float32)
        if rng.random() < 0.5:  # a tinted end: cream, pale blue, dark navy ...
            b = np.clip(b + rng.integers(-40, 41, size=3), 0, 255).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xs / max(1, width - 1) * math.cos(angle) + ys / max(1, height - 1) * math.sin(angle)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        arr = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
        return Image.fromarray(arr.astype(np.uint8))
    if kind != "textured":
        raise ValueError(f"unknown background kind {kind!r}; choose from {BACKGROUND_KINDS}")
    base = np.asarray(pick(rng), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    texture = int(rng.integers(3))
    if texture == 0:  # paper grain: smooth noise at a random scale plus fine grain
        cell = int(rng.integers(4, 24))
        coarse = rng.normal(0, 10, size=(height // cell + 2, width // cell + 2))
        grain = np.kron(coarse, np.ones((cell, cell)))[:height, :width] + rng.normal(0, 5, (height, width))
    elif texture == 1:  # stripes
        period = int(rng.integers(6, 40))
        grain = np.where(((xs + ys * rng.integers(0, 2)) // period) % 2 == 0, 9.0, -9.0)
    else:  # checkerboard
        period = int(rng.integers(8, 48))
        grain = np.where(((xs // period) + (ys // period)) % 2 == 0, 8.0, -8.0)
    arr = np.clip(base[None, None] + np.asarray(grain, np.float32)[..., None], 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def _star(cx: float, cy: float, r: float, inner: float, turn: float) -> list[tuple[float, float]]:
    return [
        (
            cx + (r if k % 2 == 0 else r * inner) * math.cos(turn + k * math.pi / 5),
            cy + (r if k % 2 == 0 else r * inner) * math.sin(turn + k * math.pi / 5),
        )
        for k in range(10)
    ]


def draw_shape(
    img: Image.Image,
    shape: str,
    center: tuple[float, float],
    extent: float,
    fill: RGB,
    rng: np.random.Generator,
) -> None:
    """Draw ``shape`` whose bounding box is about ``extent`` px on its long side, in any
    orientation a user might draw it (rectangles of any aspect, tilted triangles and stars)."""
    cx, cy = center
    r = extent / 2
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "rectangle":
        aspect = float(rng.uniform(0.45, 0.8))  # short side / long side (a square is ambiguous)
        w, h = (r, r * aspect) if rng.random() < 0.6 else (r * aspect, r)
        tilt = math.radians(float(rng.uniform(-8, 8)))
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
        draw.polygon(
            [
                (cx + x * math.cos(tilt) - y * math.sin(tilt), cy + x * math.sin(tilt) + y * math.cos(tilt))
                for x, y in corners
            ],
            fill=fill,
        )
    elif shape == "triangle":
        turn = -math.pi / 2 + math.radians(float(rng.uniform(-20, 20)))
        draw.polygon(
            [
                (cx + r * math.cos(turn + k * 2 * math.pi / 3), cy + r * math.sin(turn + k * 2 * math.pi / 3))
                for k in range(3)
            ],
            fill=fill,
        )
    elif shape == "star":
        turn = -math.pi / 2 + math.radians(float(rng.uniform(-15, 15)))
        draw.polygon(_star(cx, cy, r, float(rng.uniform(0.38, 0.5)), turn), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def degrade(
    img: Image.Image, rng: np.random.Generator, max_rotation: float = MAX_ROTATION_DEG
) -> Image.Image:
    """What a photo or a screenshot does to a drawing: a slight rotation (corners filled with the
    image's border colour) and, for most images, JPEG at one of several qualities."""
    angle = float(rng.uniform(-max_rotation, max_rotation))
    if abs(angle) > 0.3:
        arr = np.asarray(img)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        fill = tuple(int(c) for c in np.median(border, axis=0))
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=fill)
    quality = int(rng.choice(JPEG_QUALITIES))
    if quality:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img
