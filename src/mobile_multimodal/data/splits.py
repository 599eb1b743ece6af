"""Held-out evaluation splits. Their random generators are seeded from a namespace (first seed
word 1) disjoint from training's (first seed word 0), so no split shares a seed with training;
OCR splits also use held-out words, and `ocr_unseen_fonts` fonts never seen in training.

Disjoint seeds alone would still let the training generator draw, by chance, a scene identical to
a held-out one (same objects, cells, background shade and jitter): :func:`held_out_scenes` lists
the scenes of the first :data:`HELD_OUT_SCENES` examples of every scene split (the evaluation's
and the serving canary's sets are among them), and training's batch builder draws again whenever
it meets one, so no held-out scene is ever trained on.

Example::

    load_eval_split("vqa", 32)                  # the first 32 held-out VQA examples
    scene in held_out_scenes()                  # True for every scene of those
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mobile_multimodal.data import scenes, text_images
from mobile_multimodal.data.easyvqa import load_easy_vqa

DATA_VERSION = "procedural-v1+easy-vqa-1.0"
EVAL_NAMESPACE = 1
SPLITS = ("captioning", "vqa", "retrieval", "ocr", "ocr_unseen_fonts", "easy_vqa")
_SPLIT_CODES = {name: i for i, name in enumerate(SPLITS)}
DEFAULT_SIZES = {
    "captioning": 500,
    "vqa": 1000,
    "retrieval": 1000,
    "ocr": 1000,
    "ocr_unseen_fonts": 1000,
    "easy_vqa": None,
}


@dataclass(frozen=True)
class Example:
    image: Image.Image
    text: str = ""  # OCR target, or the canonical caption
    captions: tuple[str, ...] = ()  # reference captions
    question: str = ""
    answer: str = ""
    scene: scenes.Scene | None = None


SCENE_SPLITS = ("captioning", "vqa", "retrieval")
# Per scene split: at least DEFAULT_SIZES and the largest canary (MOBILE_MM_CANARY_SIZE <= 1000).
HELD_OUT_SCENES = 1000


def _rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([EVAL_NAMESPACE, _SPLIT_CODES[split], index])


@functools.cache
def held_out_scenes() -> frozenset[scenes.Scene]:
    """The scene of each of the first HELD_OUT_SCENES examples of every scene split (drawn as
    :func:`load_eval_split` draws them; not rendered)."""
    return frozenset(
        scenes.sample_scene(_rng(split, i)) for split in SCENE_SPLITS for i in range(HELD_OUT_SCENES)
    )


def load_eval_split(split: str, n: int | None = None) -> list[Example]:
    """The first `n` examples of a held-out split (all of easy-VQA's test split when n is None)."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split == "easy_vqa":
        data = load_easy_vqa("test")
        count = len(data.questions) if n is None else min(n, len(data.questions))
        return [
            Example(
                image=Image.fromarray(data.images[data.image_ids[i]]),
                question=data.questions[i],
                answer=data.answers[i],
            )
            for i in range(count)
        ]
    count = n if n is not None else int(DEFAULT_SIZES[split] or 0)
    out = []
    for i in range(count):
        rng = _rng(split, i)
        if split in ("ocr", "ocr_unseen_fonts"):
            fonts = text_images.TRAIN_FONTS if split == "ocr" else text_images.UNSEEN_FONTS
            s = text_images.sample_text_image(
                rng, fonts, text_images.held_out_words(), text_images.WORDS_ONLY
            )
            out.append(Example(image=s.image, text=s.text))
            continue
        scene = scenes.sample_scene(rng)
        caps = tuple(scenes.caption_variants(scene))
        q, a = scenes.sample_question(scene, rng) if split == "vqa" else ("", "")
        out.append(
            Example(
                image=scenes.render_scene(scene),
                text=caps[0],
                captions=caps,
                question=q,
                answer=a,
                scene=scene,
            )
        )
    return out
