"""Turning user images into the tensors the network reads.

Accepted inputs: a PIL image, a filesystem path, encoded bytes (PNG/JPEG/...), or a numpy
array (H, W), (H, W, 3) or (H, W, 4) of uint8 (or floats in 0..1).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ImageInput = Image.Image | str | Path | bytes | np.ndarray


def to_pil(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, Path)):
        with Image.open(image) as f:
            img = f.copy()
    elif isinstance(image, (bytes, bytearray)):
        img = Image.open(io.BytesIO(image))
        img.load()
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"numpy image must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        img = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    else:
        raise TypeError(
            f"unsupported image type {type(image).__name__}; pass a PIL image, path, bytes or array"
        )
    if img.mode == "RGBA":  # composite transparency over white rather than black
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def _normalise(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3) in [-1, 1]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def scene_tensor(image: ImageInput, size: int = 64) -> torch.Tensor:
    """(3, size, size): the whole image resized (captioning, VQA, retrieval)."""
    img = to_pil(image)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return _normalise(img)


def text_line_tensor(
    image: ImageInput, height: int = 32, width: int = 256, fit: str = "squeeze"
) -> torch.Tensor:
    """(3, height, width): a text line scaled to `height` keeping its aspect ratio and padded on
    the right with its own background colour. A line wider than `width` at that height is
    squeezed horizontally (``fit="squeeze"``, the first models' reader) or scaled down as a whole
    and centred vertically on its background (``fit="letterbox"``: never distorted)."""
    img = to_pil(image)
    w = max(1, round(img.width * height / max(1, img.height)))
    if fit == "letterbox" and w > width:
        h = max(1, round(img.height * width / max(1, img.width)))
        img = img.resize((width, min(h, height)), Image.Resampling.BILINEAR)
    else:
        img = img.resize((min(w, width), height), Image.Resampling.BILINEAR)
    if img.size != (width, height):
        arr = np.asarray(img)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        bg = tuple(int(c) for c in np.median(border, axis=0))
        canvas = Image.new("RGB", (width, height), bg)
        canvas.paste(img, (0, (height - img.height) // 2))
        img = canvas
    return _normalise(img)
