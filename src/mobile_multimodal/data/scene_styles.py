"""Training scenes drawn the way users' images come (data version ``procedural-v2``).

The same scenes as ``scenes.py`` (objects, colours, shapes, size words, 3x3 cells: the caption
and question language is unchanged), drawn differently: on a canvas of any size from 48 to 512 px
and an aspect ratio from 3:4 to 4:3, over a light, dark, gradient or textured background, each
object anywhere inside its cell at 5-20% ("small") or 23-50% ("large") of the canvas's short side
(the gap keeps the size word learnable), rectangles of any aspect, tilted triangles and stars,
colours jittered, then a slight rotation and, most of the time, JPEG at a random quality. An
object whose colour would vanish into the background under it (black on a dark canvas) is
recoloured first, and the scene returned says so: captions and answers follow the drawing.

Training code only: the user-style evaluation split (``user_style*.py``) is drawn by other code
from other seeds and is never imported here.

Example::

    rng = np.random.default_rng(0)
    drawing = styled_scene(sample_scene(rng), rng)
    drawing.image.size, drawing.background        # e.g. ((213, 187), 'dark')
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from mobile_multimodal.data.scenes import Scene, SceneObject
from mobile_multimodal.data.vocabulary import COLORS, POSITIONS

BACKGROUNDS = ("light", "dark", "gradient", "textured")
CANVAS_PX = (48, 512)
EXTENT = {"small": (0.05, 0.20), "large": (0.23, 0.50)}  # of the canvas's short side
MIN_CONTRAST = 100.0  # RGB distance between an object's colour and the background under it
JPEG_RATE, JPEG_QUALITY = 0.7, (15, 95)
MAX_ROTATION_DEG = 4.0
PLACEMENT_TRIES = 30

RGB = tuple[int, int, int]


def _shade(rng: np.random.Generator, lo: int, hi: int, tint: int) -> np.ndarray:
    base = float(rng.integers(lo, hi))
    return np.clip(base + rng.integers(-tint, tint + 1, size=3), 0, 255).astype(np.float32)


def _light(rng: np.random.Generator) -> np.ndarray:
    return _shade(rng, 190, 256, 18)


def _dark(rng: np.random.Generator) -> np.ndarray:
    return _shade(rng, 0, 75, 14)


def draw_background(
    rng: np.random.Generator, width: int, height: int, kind: str, tone: str | None = None
) -> np.ndarray:
    """(height, width, 3) float pixels of a background of ``kind`` (one of BACKGROUNDS); a
    gradient or texture is over a light or dark base (``tone``, else either)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind in ("light", "dark"):
        return np.broadcast_to(_light(rng) if kind == "light" else _dark(rng), (height, width, 3)).copy()
    if tone is None:
        base = _light if rng.random() < 0.55 else _dark
    else:
        base = _light if tone == "light" else _dark
    if kind == "gradient":
        # mostly within one side of the brightness range, sometimes (free tone) light to dark
        flip = tone is None and rng.random() < 0.25
        other = (_dark if base is _light else _light) if flip else base
        a, b = base(rng), other(rng)
        angle = float(rng.uniform(0, 2 * math.pi))
        t = xs * math.cos(angle) / max(1, width - 1) + ys * math.sin(angle) / max(1, height - 1)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        return a * (1 - t[..., None]) + b * t[..., None]
    if kind != "textured":
        raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}")
    colour = base(rng)
    amplitude = float(rng.uniform(4, 16))
    pattern = int(rng.integers(4))
    if pattern == 0:  # blotches: coarse noise upsampled, plus grain
        cell = int(rng.integers(3, 30))
        coarse = rng.normal(0, 1, size=(height // cell + 2, width // cell + 2))
        texture = np.kron(coarse, np.ones((cell, cell)))[:height, :width] + rng.normal(
            0, 0.4, (height, width)
        )
    elif pattern == 1:  # stripes at an angle
        period = float(rng.uniform(4, 40))
        angle = float(rng.uniform(0, math.pi))
        texture = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)
    elif pattern == 2:  # checks
        period = int(rng.integers(5, 50))
        texture = np.where(((xs // period) + (ys // period)) % 2 == 0, 1.0, -1.0)
    else:  # fine grain (paper, sensor noise)
        texture = rng.normal(0, 1, size=(height, width))
    return np.clip(colour + amplitude * np.asarray(texture, np.float32)[..., None], 0, 255)


def _distance(a: RGB | np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def _layout(
    scene: Scene, rng: np.random.Generator, w: int, h: int
) -> list[tuple[float, float, float]] | None:
    """(cx, cy, extent) per object: the centre inside the object's cell, the whole object inside
    the canvas, no two objects' bounding circles overlapping; None when no try fits."""
    short = min(w, h)
    for _ in range(PLACEMENT_TRIES):
        placed: list[tuple[float, float, float]] = []
        for obj in scene.objects:
            lo, hi = EXTENT[obj.size]
            e = float(rng.uniform(lo, hi)) * short
            cell = POSITIONS.index(obj.position)
            col, row = cell % 3, cell // 3
            x0, x1 = max(col * w / 3, e / 2), min((col + 1) * w / 3, w - e / 2)
            y0, y1 = max(row * h / 3, e / 2), min((row + 1) * h / 3, h - e / 2)
            c = (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)), e)
            if any(math.hypot(c[0] - p[0], c[1] - p[1]) <= (e + p[2]) / 2 + 1 for p in placed):
                break
            placed.append(c)
        if len(placed) == len(scene.objects):
            return placed
    return None


def _polygon(
    shape: str, cx: float, cy: float, e: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    r = e / 2
    if shape == "rectangle":
        short = float(rng.uniform(0.5, 0.8))
        hw, hh = (r, r * short) if rng.random() < 0.65 else (r * short, r)
        corners = [(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
        turn = math.radians(float(rng.uniform(-10, 10)))
    elif shape == "triangle":
        turn = math.radians(float(rng.uniform(-25, 25)))
        corners = [
            (r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ]
    else:  # star
        turn = math.radians(float(rng.uniform(-18, 18)))
        inner = float(rng.uniform(0.38, 0.52))
        corners = [
            (
                (r if k % 2 == 0 else r * inner) * math.cos(-math.pi / 2 + k * math.pi / 5),
                (r if k % 2 == 0 else r * inner) * math.sin(-math.pi / 2 + k * math.pi / 5),
            )
            for k in range(10)
        ]
    cos, sin = math.cos(turn), math.sin(turn)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners]


def _degrade(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, float, int]:
    """(image, rotation in degrees, JPEG quality or 0)."""
    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    quality = 0
    if abs(angle) > 0.25:
        arr = np.asarray(img)
        edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        fill = tuple(int(v) for v in np.median(edge, axis=0))
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if rng.random() < JPEG_RATE:
        quality = int(rng.integers(*JPEG_QUALITY))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img, angle, quality


def canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    side = math.exp(float(rng.uniform(math.log(CANVAS_PX[0]), math.log(CANVAS_PX[1]))))
    aspect = math.exp(float(rng.uniform(math.log(0.75), math.log(4 / 3))))
    w, h = round(side * math.sqrt(aspect)), round(side / math.sqrt(aspect))
    return int(np.clip(w, *CANVAS_PX)), int(np.clip(h, *CANVAS_PX))


@dataclass(frozen=True)
class Drawing:
    """A styled scene and how it was drawn (what the tests check the style against)."""

    scene: Scene  # as drawn: captions and answers come from this one
    image: Image.Image
    background: str  # one of BACKGROUNDS
    canvas: tuple[int, int]  # (width, height) before the rotation
    boxes: tuple[tuple[float, float, float], ...]  # (cx, cy, extent in px) per object
    rotation_deg: float
    jpeg_quality: int  # 0: not JPEG-compressed


def styled_scene(scene: Scene, rng: np.random.Generator) -> Drawing:
    """``scene`` drawn user-style. Objects keep their shape, size word and cell; a colour without
    contrast to the background under it is replaced by one with it."""
    while True:
        w, h = canvas_size(rng)
        layout = _layout(scene, rng, w, h)
        if layout is not None:
            break
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    pixels = draw_background(rng, w, h, kind)
    img = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    objects: list[SceneObject] = []
    for obj, (cx, cy, e) in zip(scene.objects, layout, strict=True):
        under = pixels[min(h - 1, int(cy)), min(w - 1, int(cx))]
        colour = obj.color
        if _distance(COLORS[colour], under) < MIN_CONTRAST:
            visible = [c for c, rgb in COLORS.items() if _distance(rgb, under) >= MIN_CONTRAST]
            colour = visible[int(rng.integers(len(visible)))]
        fill = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in COLORS[colour])
        if obj.shape == "circle":
            draw.ellipse([cx - e / 2, cy - e / 2, cx + e / 2, cy + e / 2], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, e, rng), fill=fill)
        objects.append(replace(obj, color=colour))
    drawn = Scene(objects=tuple(objects), background=scene.background, jitter=scene.jitter)
    image, angle, quality = _degrade(img, rng)
    return Drawing(drawn, image, kind, (w, h), tuple(layout), angle, quality)
