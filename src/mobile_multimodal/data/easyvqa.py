"""The easy-VQA data set (Zhou 2020, MIT licence), shipped inside the `easy-vqa` wheel.

Its train split is an extra VQA training source; its test split is used only for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image


class EasyVQAUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class EasyVQASplit:
    images: np.ndarray  # (N, 64, 64, 3) uint8, indexed by image id
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    image_ids: np.ndarray  # (Q,) int


@lru_cache(maxsize=2)
def load_easy_vqa(split: str) -> EasyVQASplit:
    if split not in ("train", "test"):
        raise ValueError(f"easy-VQA split must be 'train' or 'test', got {split!r}")
    try:
        import easy_vqa
    except ImportError as e:  # the dev extra installs it
        raise EasyVQAUnavailable("the `easy-vqa` package is not installed: pip install easy-vqa") from e
    if split == "train":
        qs, ans, ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        qs, ans, ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    images = np.zeros((max(paths) + 1, 64, 64, 3), dtype=np.uint8)
    for image_id, path in paths.items():
        with Image.open(path) as im:
            images[image_id] = np.asarray(im.convert("RGB"))
    # our tokenizer splits "?" off as its own token; keep the question text as published
    return EasyVQASplit(images, tuple(qs), tuple(ans), np.asarray(ids, dtype=np.int64))
