"""Captions and answers decoded continuously: :class:`DecodeBatch` at the level of the Python API.

A serving scheduler admits requests (image, task, token budget, question) into one running batch
at any step and collects each as soon as it is done; what it gets back is what
``generate_captions`` / ``answer_questions`` return for that request alone: the same text, the
same confidence (``exp`` of the mean token log-probability) and, for a caption with a budget of
at least ``CAPTION_TOKENS``, the same in-domain score (``domain.py``).

:meth:`TaskDecoding.admit` encodes the admitted images in one encoder pass per task (VQA's
conditioned on its questions, as ``answer_questions`` does), builds each prompt and its decoding
constraint (``constraints.py``), and prefills them into the batch. A request the model refuses
(a question over ``max_question_tokens``, a budget below 1) is returned as refused, alone: the
others are admitted.

Example::

    decoding = TaskDecoding(model)
    done, refused = decoding.admit([TaskRequest("captioning", img, 32, tag=1),
                                    TaskRequest("vqa", img, 8, question="what color is it ?", tag=2)])
    while len(decoding):
        for result in decoding.step():
            print(result.tag, result.text, result.confidence)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mobile_multimodal.model.constraints import TaskConstraints
from mobile_multimodal.model.decode_batch import DecodeBatch, DecodeRow, FinishedRow
from mobile_multimodal.model.decoder import StopSignal
from mobile_multimodal.model.domain import CAPTION_TOKENS, SCORED_TOKENS
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.preprocess import ImageInput, scene_tensor

DECODED_TASKS = ("captioning", "vqa")


@dataclass
class TaskRequest:
    """One caption (``task="captioning"``) or answer (``"vqa"``, with ``question``) to decode, at
    most ``max_tokens`` words. ``domain``: measure the in-domain score (captions with a budget of
    at least ``CAPTION_TOKENS`` only, as ``generate_captions``; ignored for answers)."""

    task: str
    image: ImageInput
    max_tokens: int
    question: str | None = None
    stop: StopSignal | None = None
    domain: bool = False
    tag: object = None


@dataclass
class TaskResult:
    tag: object
    text: str
    confidence: float
    domain_score: float | None
    stopped: bool
    # the image's embedding from the caption's own image tokens (the check's caption agreement)
    domain_embedding: np.ndarray | None = None


def scores_domain(request: TaskRequest) -> bool:
    """Whether ``request``'s own decode measures the domain check's evidence: a caption that asks
    for it, with a budget that decodes the check's caption."""
    return request.domain and request.task == "captioning" and request.max_tokens >= CAPTION_TOKENS


def check_request(request: TaskRequest, check_question: Callable[[str], None]) -> None:
    """Raise what a model would raise for ``request`` alone: an undecoded task, a budget below
    1, a question the model refuses (``check_question``, e.g. over its prompt limit)."""
    if request.task not in DECODED_TASKS:
        raise ValueError(f"task {request.task!r} is not decoded; choose from {DECODED_TASKS}")
    if request.max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
    if request.task == "vqa":
        check_question(request.question or "")


class TaskDecoding:
    """A running batch of caption and answer decodes over one model."""

    def __init__(self, model: MobileMultiModalLLM) -> None:
        self.model = model
        tok = model.tokenizer
        self.batch = DecodeBatch(model.network.decoder, tok.eos_id, tok.pad_id)
        self._embeddings: dict[int, np.ndarray] = {}  # id(request) -> its image's embedding

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def requests(self) -> list[TaskRequest]:
        """The requests decoding now."""
        return [t for t in self.batch.tags if isinstance(t, TaskRequest)]

    def check(self, request: TaskRequest) -> None:
        """Raise what the model would raise for ``request`` alone (before any tensor)."""
        check_request(request, self.model.check_question)

    @torch.inference_mode()
    def admit(self, requests: Sequence[TaskRequest]) -> tuple[list[TaskResult], dict[int, Exception]]:
        """Encode and prefill ``requests``. Returns the ones finished at once (stopped before they
        began) and the refused ones by index (each with the model's error)."""
        refused: dict[int, Exception] = {}
        good: list[int] = []
        for i, r in enumerate(requests):
            try:
                self.check(r)
                good.append(i)
            except (ValueError, TypeError) as exc:  # PromptTooLongError is a ValueError
                refused[i] = exc
        # every image is encoded before any row joins: a failed encoder pass leaves the batch as
        # it was (a serving batcher then admits each request alone, so only a bad one fails)
        groups = []
        for task in DECODED_TASKS:
            group = [requests[i] for i in good if requests[i].task == task]
            if group:
                groups.append(self._encode_task(task, group))
        done: list[TaskResult] = []
        for rows, tokens in groups:
            done += [self._result(f) for f in self.batch.add(rows, tokens)]
        return done, refused

    def _encode_task(self, task: str, group: list[TaskRequest]) -> tuple[list[DecodeRow], torch.Tensor]:
        model = self.model
        scenes = torch.stack([scene_tensor(r.image, model.config.scene_size) for r in group]).to(model.device)
        question: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if task == "vqa":
            ids, valid = model.encode_texts([r.question or "" for r in group], allow_empty=True)
            question = (ids.to(model.device), valid.to(model.device))
        tokens, _ = model.network.encode_images(scenes, *question)
        scored = [i for i, r in enumerate(group) if scores_domain(r)]
        if scored:  # the domain check's image embeddings, from the tokens the captions decode from
            embedded = model.network.image_head(tokens[scored]).float().cpu().numpy()
            self._embeddings.update((id(group[i]), e) for i, e in zip(scored, embedded, strict=True))
        rules = TaskConstraints.from_tokenizer(model.tokenizer) if model.constrained_decoding else None
        rows = [
            DecodeRow(
                prompt=model.tokenizer.prompt(task, r.question if task == "vqa" else None),
                max_new_tokens=r.max_tokens + 1,  # one beyond the budget lets <eos> end it
                allowed=None if rules is None else rules.rule(task),
                stop=r.stop,
                scores=True,
                # the in-domain score is a caption's (domain.py): an answer's decode gives none
                prefix_tokens=SCORED_TOKENS if scores_domain(r) else 0,
                tag=r,
            )
            for r in group
        ]
        return rows, tokens

    @torch.inference_mode()
    def step(self) -> list[TaskResult]:
        """One token for every active request; the ones that finished, with their text."""
        return [self._result(f) for f in self.batch.step()]

    def clear(self) -> list[TaskRequest]:
        """Drop every active request (after a failed step); the requests dropped."""
        self._embeddings.clear()
        return [t for t in self.batch.clear() if isinstance(t, TaskRequest)]

    def _result(self, row: FinishedRow) -> TaskResult:
        request = row.tag
        assert isinstance(request, TaskRequest)
        text = self.model.tokenizer.decode(row.tokens[: request.max_tokens])
        confidence = math.exp(row.score) if row.score is not None else 1.0
        domain = math.exp(row.prefix_score) if row.prefix_score is not None else None
        embedding = self._embeddings.pop(id(request), None)
        return TaskResult(request.tag, text, confidence, domain, row.stopped, embedding)
