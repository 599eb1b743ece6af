"""Out-of-domain inputs: natural photographs and empty images, for calibrating and testing the
out-of-domain flag (``model/domain.py``).

Photographs are scikit-image's sample images that ship inside its wheel (the dev extra installs
scikit-image; nothing is downloaded): 20 photographs (people, animals, objects, landscapes,
microscopy, astronomy, a scanned page) and seeded crops of them at 30-100% of their size.
Empty images are flat canvases of many shades and sizes, and flat text lines for OCR.

Example::

    photos = natural_photographs(crops_per_photo=4)   # 20 x 5 PIL images
    blanks = empty_images()
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from PIL import Image

PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
    "cell",
    "page",
    "text",
)


class NaturalImagesUnavailable(RuntimeError):
    """scikit-image (the dev extra) is not installed."""


def _rgb8(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(1e-6, float(a.max() - a.min()))).astype(np.uint8)
    return a


@lru_cache(maxsize=1)
def _photo_arrays() -> tuple[np.ndarray, ...]:
    try:
        import skimage.data as samples
    except ImportError as e:
        raise NaturalImagesUnavailable("scikit-image is not installed: pip install scikit-image") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays = [np.asarray(getattr(samples, name)()) for name in PHOTOS]
        left, right, _ = samples.stereo_motorcycle()
    return tuple(_rgb8(a) for a in [*arrays, np.asarray(left), np.asarray(right)])


def natural_photographs(crops_per_photo: int = 9, seed: int = 0) -> list[Image.Image]:
    """Each photograph whole, then ``crops_per_photo`` seeded crops of it (30-100% of its size)."""
    rng = np.random.default_rng([3, seed])
    out: list[Image.Image] = []
    for a in _photo_arrays():
        out.append(Image.fromarray(a))
        h, w = a.shape[:2]
        for _ in range(crops_per_photo):
            s = float(rng.uniform(0.3, 1.0))
            ch, cw = int(h * s), min(w, int(w * s * float(rng.uniform(0.8, 1.25))))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out.append(Image.fromarray(np.ascontiguousarray(a[y : y + ch, x : x + cw])))
    return out


def empty_images() -> list[Image.Image]:
    """Flat canvases: greys from black to white, tints, one saturated colour; scene and line sizes."""
    shades = [(v, v, v) for v in (0, 40, 128, 200, 230, 245, 255)]
    tints = [(255, 250, 240), (240, 248, 255), (20, 20, 40), (220, 30, 30)]
    sizes = [(64, 64), (300, 300), (640, 480), (256, 32), (120, 40)]
    return [Image.new("RGB", size, color) for size in sizes for color in shades + tints]
