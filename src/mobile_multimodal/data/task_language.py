"""What each decoded task may say, read off the training corpus itself.

- Captions use a closed vocabulary: every word any training caption variant uses
  (``scenes.caption_variants`` over every object in every cell, and over scenes of 2 and 3
  objects for the words that join them). A caption never holds "yes", "what", "color" ...
- VQA answers are a closed set: every answer ``scenes.sample_question`` gave over a fixed
  sample of 20,000 training-style questions (seeded, so the set is the same on every machine;
  tests check it is the closed world's full set and that easy-VQA's 13 answers are inside it).
- Positions: in a training caption every run of position words is one position phrase and no
  phrase repeats (objects sit in distinct cells). Decoding enforces both (``model/constraints.py``).

Example::

    "yes" in caption_words()          # False
    ("top", "left") in vqa_answers()  # True
"""

from __future__ import annotations

from functools import lru_cache
from itertools import product

import numpy as np

from mobile_multimodal.data import scenes
from mobile_multimodal.data.vocabulary import COLORS, POSITIONS, SHAPES, SIZES

ANSWER_SAMPLE = 20_000
ANSWER_SEED = (0, 99)  # the training namespace (0); 99 is no split's code


def _scene(objects: list[scenes.SceneObject]) -> scenes.Scene:
    return scenes.Scene(objects=tuple(objects), background=(255, 255, 255), jitter=((0, 0),) * len(objects))


@lru_cache(maxsize=1)
def caption_words() -> frozenset[str]:
    """Every word (token) of every caption variant the training corpus can produce."""
    words: set[str] = set()
    singles = [
        scenes.SceneObject(shape=sh, color=c, size=sz, position=p)
        for sh, c, sz, p in product(SHAPES, COLORS, SIZES, POSITIONS)
    ]
    groups = [[o] for o in singles] + [
        [singles[0], singles[-1]],
        [singles[0], singles[len(singles) // 2], singles[-1]],
    ]
    for group in groups:
        for caption in scenes.caption_variants(_scene(group)):
            words.update(caption.split())
    return frozenset(words)


@lru_cache(maxsize=1)
def vqa_answers() -> frozenset[tuple[str, ...]]:
    """Every answer (as its words) of a fixed sample of training questions."""
    rng = np.random.default_rng(list(ANSWER_SEED))
    answers: set[tuple[str, ...]] = set()
    for _ in range(ANSWER_SAMPLE):
        scene = scenes.sample_scene(rng)
        _, answer = scenes.sample_question(scene, rng)
        answers.add(tuple(answer.split()))
    return frozenset(answers)


def position_phrases() -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.split()) for p in POSITIONS)
