"""What each decoded task may say, read off the training corpus itself.

- Captions use a closed vocabulary: every word any training caption variant uses
  (``scenes.caption_variants`` over every object in every cell, and over scenes of 2 and 3
  objects for the words that join them). A caption never holds "yes", "what", "color" ...
- VQA answers are a closed set: a colour, a size, a shape, a position, a count up to
  ``MAX_OBJECTS``, a colour and a shape, yes or no (``vqa_answers``, 61 answers). Written down
  rather than sampled at start-up (sampling 20,000 questions took seconds of every model load):
  a test checks it equals every answer ``scenes.sample_question`` gives over a fixed, seeded
  sample of 20,000 training-style questions (``sampled_vqa_answers``), and that easy-VQA's 13
  answers are inside it.
- The caption language itself (``caption_automaton``): every caption the generator can write,
  as a minimal automaton over words. Built from the caption variants of every layout (1-3
  objects in distinct cells, reading order) with the size, colour and shape left as slots, which
  are independent in the generator. A caption decoded through it is one a training caption could
  be: a known template, each object in its own cell, as many objects as its count word says.

Example::

    "yes" in caption_words()          # False
    ("top", "left") in vqa_answers()  # True
    edges, accepting = caption_automaton()   # edges[state] = {word: next state}; start is 0
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from itertools import combinations, product

import numpy as np

from mobile_multimodal.data import scenes
from mobile_multimodal.data.vocabulary import COLORS, MAX_OBJECTS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES

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
    """Every answer (as its words) a training question can have (see the module doc)."""
    single = [*COLORS, *SIZES, *SHAPES, *NUMBER_WORDS[: MAX_OBJECTS + 1], "yes", "no"]
    answers = {(word,) for word in single} | {tuple(p.split()) for p in POSITIONS}
    return frozenset(answers | {(color, shape) for color in COLORS for shape in SHAPES})


def sampled_vqa_answers() -> frozenset[tuple[str, ...]]:
    """Every answer of a fixed sample of training questions (what ``vqa_answers`` must equal)."""
    rng = np.random.default_rng(list(ANSWER_SEED))
    answers: set[tuple[str, ...]] = set()
    for _ in range(ANSWER_SAMPLE):
        scene = scenes.sample_scene(rng)
        _, answer = scenes.sample_question(scene, rng)
        answers.add(tuple(answer.split()))
    return frozenset(answers)


def position_phrases() -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.split()) for p in POSITIONS)


Automaton = tuple[tuple[dict[str, int], ...], frozenset[int]]
_SLOTS = {"<size>": SIZES, "<color>": tuple(COLORS), "<shape>": SHAPES}


def _caption_templates() -> set[tuple[str, ...]]:
    templates: set[tuple[str, ...]] = set()
    for n in range(1, MAX_OBJECTS + 1):
        for cells in combinations(range(len(POSITIONS)), n):  # sorted: the captions' reading order
            objects = [
                scenes.SceneObject(shape="<shape>", color="<color>", size="<size>", position=POSITIONS[c])
                for c in cells
            ]
            for caption in scenes.caption_variants(_scene(objects)):
                templates.add(tuple(caption.split()))
    return templates


def minimal_automaton(sequences: Iterable[tuple[str, ...]], slots: dict[str, tuple[str, ...]]) -> Automaton:
    """The minimal deterministic automaton accepting exactly ``sequences`` (with each slot label
    standing for every word of its class): a trie whose equivalent states are merged (states
    with the same acceptance and the same labelled edges to equivalent states)."""
    trie: list[dict[str, int]] = [{}]
    ends: set[int] = set()
    for seq in sequences:
        node = 0
        for label in seq:
            if label not in trie[node]:
                trie.append({})
                trie[node][label] = len(trie) - 1
            node = trie[node][label]
        ends.add(node)
    ids: dict[tuple[object, ...], int] = {}
    canon: dict[int, int] = {}
    merged: list[tuple[bool, dict[str, int]]] = []

    def visit(node: int) -> int:
        if node in canon:
            return canon[node]
        edges = {label: visit(child) for label, child in trie[node].items()}
        key = (node in ends, tuple(sorted(edges.items())))
        if key not in ids:
            ids[key] = len(merged)
            merged.append((node in ends, edges))
        canon[node] = ids[key]
        return canon[node]

    start = visit(0)
    # renumber so the start is state 0, then expand the slots into their words
    order = [start] + [i for i in range(len(merged)) if i != start]
    new = {old: k for k, old in enumerate(order)}
    edges_out: list[dict[str, int]] = []
    for old in order:
        expanded: dict[str, int] = {}
        for label, child in merged[old][1].items():
            for word in slots.get(label, (label,)):
                expanded[word] = new[child]
        edges_out.append(expanded)
    accepting = frozenset(new[old] for old in order if merged[old][0])
    return tuple(edges_out), accepting


@lru_cache(maxsize=1)
def caption_automaton() -> Automaton:
    """Every caption the training generator can write (see the module doc)."""
    return minimal_automaton(_caption_templates(), _SLOTS)


@lru_cache(maxsize=1)
def answer_automaton() -> Automaton:
    """Exactly the training answers (``vqa_answers``)."""
    return minimal_automaton(sorted(vqa_answers()), {})
