"""The canary set: a small, fixed, held-out set per served task, scored in small slices.

The examples are the first ``size`` of each held-out eval split (``data/splits.py``: seeds from
the evaluation namespace, never used by training; OCR on held-out words), generated
deterministically from that fixed seed, so every process and every run scores the same images.
Scores are the eval report's primary metrics (``training/eval_metrics.py``): CIDEr-D for captioning
(over the canary's own references, so not comparable with the 500-example report), word accuracy
for OCR, exact-match accuracy for VQA, recall@1 over a pool of ``size`` for retrieval.

A :class:`CanaryRun` is cut into slices of at most ``slice_size`` examples (one model call
each) so that a server can run them one at a time between requests (``serving/canary.py``).
The model is deterministic, so a model that did not change scores exactly the same every run:
any drop is a change of the model or of its input path, not noise.

Example::

    canary = CanarySet.build(size=32)
    run = CanaryRun(canary, model, slice_size=8)
    for work in run.slices():
        work()                     # each is one small model call
    run.scores()                   # {"captioning": 7.1, "ocr": 0.94, "vqa": 0.97, "retrieval": 1.0}
    evaluate_canary(model, 32)     # the same, in one go: {"size": 32, "tasks": {...}}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from mobile_multimodal.data.splits import Example, load_eval_split
from mobile_multimodal.model.ctc_lm import ocr_decoding_of
from mobile_multimodal.training.eval_metrics import cider_d, exact_match_accuracy, recall_at_k, word_accuracy

CANARY_TASKS = ("captioning", "ocr", "vqa", "retrieval")
DEFAULT_CANARY_SIZE = 32


class CanaryModel(Protocol):
    """The model API a canary needs (``MobileMultiModalLLM`` has it)."""

    def generate_captions(self, images: list[Any]) -> list[str]: ...
    def extract_texts(self, images: list[Any]) -> list[str]: ...
    def answer_questions(self, images: list[Any], questions: list[str]) -> list[str]: ...
    def get_image_embeddings(self, images: list[Any]) -> np.ndarray: ...
    def get_text_embeddings(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class CanarySet:
    """``size`` held-out examples of each task in :data:`CANARY_TASKS`."""

    size: int
    examples: dict[str, list[Example]]

    @classmethod
    def build(cls, size: int = DEFAULT_CANARY_SIZE) -> CanarySet:
        if size < 2:
            raise ValueError(f"a canary set needs at least 2 examples per task, got {size}")
        return cls(size, {task: load_eval_split(task, size) for task in CANARY_TASKS})


class CanaryRun:
    """One evaluation of ``model`` on ``canary``: call every slice, then :meth:`scores`."""

    def __init__(self, canary: CanarySet, model: CanaryModel, slice_size: int = 8) -> None:
        if slice_size < 1:
            raise ValueError(f"slice_size must be >= 1, got {slice_size}")
        self.canary = canary
        self.model = model
        self.slice_size = slice_size
        self._outputs: dict[str, list[Any]] = {t: [] for t in CANARY_TASKS}
        self._text_embeddings: list[np.ndarray] = []

    def slices(self) -> Iterator[Callable[[], None]]:
        """Units of work, each one model call on at most ``slice_size`` examples."""
        for task in CANARY_TASKS:
            examples = self.canary.examples[task]
            for i in range(0, len(examples), self.slice_size):
                yield partial(self._run, task, examples[i : i + self.slice_size])
        texts = [e.text for e in self.canary.examples["retrieval"]]
        for i in range(0, len(texts), self.slice_size):
            yield partial(self._embed_texts, texts[i : i + self.slice_size])

    def _embed_texts(self, texts: list[str]) -> None:
        self._text_embeddings.append(self.model.get_text_embeddings(texts))

    def _run(self, task: str, chunk: Sequence[Example]) -> None:
        images = [e.image for e in chunk]
        out = self._outputs[task]
        if task == "captioning":
            out.extend(self.model.generate_captions(images))
        elif task == "ocr":
            out.extend(self.model.extract_texts(images))
        elif task == "vqa":
            out.extend(self.model.answer_questions(images, [e.question for e in chunk]))
        else:
            out.extend(self.model.get_image_embeddings(images))

    def scores(self) -> dict[str, float]:
        """Primary metric per task; every slice must have run."""
        ex = self.canary.examples
        for task in CANARY_TASKS:
            if len(self._outputs[task]) != len(ex[task]):
                raise RuntimeError(f"canary {task}: {len(self._outputs[task])} of {len(ex[task])} outputs")
        result = {
            "captioning": cider_d(self._outputs["captioning"], [list(e.captions) for e in ex["captioning"]]),
            "ocr": word_accuracy(self._outputs["ocr"], [e.text for e in ex["ocr"]]),
            "vqa": exact_match_accuracy(self._outputs["vqa"], [e.answer for e in ex["vqa"]]),
        }
        texts = [e.text for e in ex["retrieval"]]
        image_emb = np.stack(self._outputs["retrieval"])  # (N, D)
        text_emb = np.concatenate(self._text_embeddings)  # (N, D)
        correct = np.array([[a == b for b in texts] for a in texts])  # equal captions both count
        result["retrieval"] = recall_at_k(image_emb @ text_emb.T, correct, 1)
        return result

    def outputs(self, task: str) -> list[Any]:
        """What the model answered for ``task`` (texts, or image embeddings for retrieval)."""
        return list(self._outputs[task])


def evaluate_canary(model: CanaryModel, size: int = DEFAULT_CANARY_SIZE) -> dict[str, Any]:
    """The canary report stored in a model's manifest (``canary``): the baseline a server's
    live canary runs are compared with."""
    run = CanaryRun(CanarySet.build(size), model)
    for work in run.slices():
        work()
    return {
        "size": size,
        "ocr_decoding": ocr_decoding_of(model),  # a server reading otherwise is compared with its reference
        "tasks": {task: {"primary": score} for task, score in run.scores().items()},
    }
