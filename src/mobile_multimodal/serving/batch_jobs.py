"""What the engine runs: the model's interface, one request's job, and one batch of jobs.

:class:`ServableModel` is what the engine needs of a model (``MobileMultiModalLLM`` provides it);
:class:`Job` is one request's decoded inputs; :func:`run_batch` runs jobs of one
:data:`BatchKey` (task, max_tokens) through the model in one call, on the model thread.

Example::

    results = run_batch(model, ("captioning", 32), [Job(image=img), Job(image=img2)])
    results[0]        # {"caption": "...", "confidence": 0.87}
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mobile_multimodal.serving.domain_flags import annotate


class ServableModel(Protocol):
    """What the engine needs of a model (``MobileMultiModalLLM`` provides it)."""

    quantization: str
    tokenizer: Any  # .encode(text) -> ids, .count(text, stop_after) -> int, .prompt(task, question) -> ids

    @property
    def max_question_tokens(self) -> int: ...
    @property
    def max_text_tokens(self) -> int: ...
    def generate_captions(
        self,
        images: list[Any],
        max_tokens: int = 32,
        stop: Sequence[threading.Event] | None = None,
        confidences: list[float] | None = None,
    ) -> list[str]: ...
    def extract_texts(self, images: list[Any], confidences: list[float] | None = None) -> list[str]: ...
    def answer_questions(
        self,
        images: list[Any],
        questions: list[str],
        max_tokens: int = 8,
        stop: Sequence[threading.Event] | None = None,
        confidences: list[float] | None = None,
    ) -> list[str]: ...
    def get_image_embeddings(self, images: list[Any]) -> np.ndarray: ...
    def get_text_embeddings(self, texts: list[str]) -> np.ndarray: ...
    def get_model_info(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Job:
    """One request's inputs (the image is already decoded and validated). ``cancelled`` is set
    when its request gave up: the model stops working on it at its next decode step."""

    image: Any
    question: str | None = None
    texts: tuple[str, ...] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


BatchKey = tuple[str, int]  # (task, max_tokens): only these requests can share a forward pass


def batch_key(task: str, max_tokens: int) -> BatchKey:
    """Only requests of one task and (for generating tasks) one token budget share a batch."""
    return (task, max_tokens if task in ("captioning", "vqa") else 0)


def run_batch(
    model: ServableModel, key: BatchKey, jobs: list[Job], domain_tasks: str = "captioning"
) -> list[dict[str, Any]]:
    """Run one batch of one task through the model; one result dict per job, in order.
    ``domain_tasks``: the tasks whose results say out_of_domain (``domain_flags.py``).

    Jobs cancelled before the batch starts are not run at all (their result is an empty dict
    that nobody reads: their requests have already been answered)."""
    live = [i for i, j in enumerate(jobs) if not j.cancelled.is_set()]
    results: list[dict[str, Any]] = [{} for _ in jobs]
    if live:
        evidence = DomainEvidence([], [])
        checked = key[0] in domain_tasks.split(",")
        done = _run_jobs(model, key, [jobs[i] for i in live], evidence if checked else None)
        # out_of_domain, domain_score, domain_agreement (a caption batch measured its evidence itself)
        images = [jobs[i].image for i in live]
        annotate(model, key[0], images, done, domain_tasks, evidence.scores, evidence.embeddings)
        for i, result in zip(live, done, strict=True):
            results[i] = result
    return results


def _with_confidence(field: str, outputs: list[str], confidences: list[float]) -> list[dict[str, Any]]:
    """One result per output; "confidence" only where the model filled one in (a model that
    does not measure it answers without)."""
    if len(confidences) != len(outputs):
        return [{field: o} for o in outputs]
    return [{field: o, "confidence": round(c, 6)} for o, c in zip(outputs, confidences, strict=True)]


def retrieval_margin(scores: np.ndarray) -> float:
    """Retrieval confidence: best minus runner-up cosine score, clamped to [0, 1] (the cosine
    itself when there is one text)."""
    ranked = np.sort(scores)[::-1]
    margin = float(ranked[0] - ranked[1]) if len(ranked) > 1 else float(ranked[0])
    return min(1.0, max(0.0, margin))


@dataclass
class DomainEvidence:
    """What a caption batch's own decode measured for the domain check (``domain_flags.py``)."""

    scores: list[float]
    embeddings: list[np.ndarray]


def _run_jobs(
    model: ServableModel, key: BatchKey, jobs: list[Job], domain: DomainEvidence | None = None
) -> list[dict[str, Any]]:
    task, max_tokens = key
    images = [j.image for j in jobs]
    stop = [j.cancelled for j in jobs]
    confidences: list[float] = []
    if task == "captioning":
        # a model with the domain check scores each image in the caption's own decode
        scored = (
            {"domain": domain.scores, "embeddings": domain.embeddings}
            if domain is not None and hasattr(model, "out_of_domain")
            else {}
        )
        captions = model.generate_captions(
            images, max_tokens=max_tokens, stop=stop, confidences=confidences, **scored
        )
        return _with_confidence("caption", captions, confidences)
    if task == "ocr":
        return _with_confidence("text", model.extract_texts(images, confidences=confidences), confidences)
    if task == "vqa":
        questions = [j.question or "" for j in jobs]
        answers = model.answer_questions(
            images, questions, max_tokens=max_tokens, stop=stop, confidences=confidences
        )
        return _with_confidence("answer", answers, confidences)
    if task == "retrieval":
        image_emb = model.get_image_embeddings(images)  # (N, D), L2-normalised
        all_texts = [t for j in jobs for t in (j.texts or ())]
        text_emb = model.get_text_embeddings(all_texts) if all_texts else None  # (T, D)
        results: list[dict[str, Any]] = []
        offset = 0
        for i, job in enumerate(jobs):
            if not job.texts:
                results.append({"embedding": [float(x) for x in image_emb[i]]})
                continue
            assert text_emb is not None
            scores = text_emb[offset : offset + len(job.texts)] @ image_emb[i]  # (len(texts),)
            offset += len(job.texts)
            best = int(np.argmax(scores))
            results.append(
                {
                    "scores": [float(s) for s in scores],
                    "best": job.texts[best],
                    "best_index": best,
                    "confidence": round(retrieval_margin(scores), 6),
                }
            )
        return results
    raise ValueError(f"unknown task {task!r}")
