"""Continuous decoding on the ONNX Runtime backend: ``TaskDecoding``'s interface over the bundle.

The continuous batcher (``continuous_batcher.py``) drives a running batch one step at a time:
``admit`` requests at any step, ``step`` for one token of every row, the finished ones back as
``TaskResult``. For the PyTorch model that is ``model/task_decoding.TaskDecoding``; for a bundle
served on ONNX Runtime it is this class, over ``export/running_decode.RunningDecode`` (the
bundle's own greedy loop, rows joining at their own positions). Each request gets what
``OnnxRuntimeModel.generate_captions`` / ``answer_questions`` give it alone: the same text and
confidence (``exp`` of the mean token log-probability) and, for a caption that asks for it, the
same in-domain score (``model/domain.py``).

Example::

    decoding = BundleTaskDecoding(onnx_model)
    done, refused = decoding.admit([TaskRequest("captioning", image, 32, tag=1)])
    while len(decoding):
        for result in decoding.step():
            print(result.tag, result.text, result.confidence)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mobile_multimodal.export.batch_decode import batch_image_tokens, batch_token_embeddings
from mobile_multimodal.export.running_decode import DecodedAnswer, DecodeRequest, RunningDecode
from mobile_multimodal.model.domain import prefix_score
from mobile_multimodal.model.task_decoding import (
    DECODED_TASKS,
    TaskRequest,
    TaskResult,
    check_request,
    scores_domain,
)
from mobile_multimodal.serving.onnx_runtime_model import OnnxRuntimeModel


def decodes_continuously(model: object) -> bool:
    """A bundle whose ``decoder_step`` takes a batch (every export since its batch axis became
    dynamic); an older one is decoded in static batches."""
    return isinstance(model, OnnxRuntimeModel) and model.batched


class BundleTaskDecoding:
    """A running batch of caption and answer decodes over one ONNX Runtime model."""

    def __init__(self, model: OnnxRuntimeModel) -> None:
        self.model = model
        self._running = RunningDecode(model.bundle)
        self._embeddings: dict[int, np.ndarray] = {}  # id(request) -> its image's embedding

    def __len__(self) -> int:
        return len(self._running)

    @property
    def requests(self) -> list[TaskRequest]:
        """The requests decoding now."""
        return [t for t in self._running.tags if isinstance(t, TaskRequest)]

    def check(self, request: TaskRequest) -> None:
        """Raise what the model would raise for ``request`` alone (before any graph runs)."""
        check_request(request, self.model.check_question)

    def admit(self, requests: Sequence[TaskRequest]) -> tuple[list[TaskResult], dict[int, Exception]]:
        """Encode ``requests``' images (one vision call per task) and let them join. Returns the
        ones finished at once (stopped before they began) and the refused ones by index."""
        refused: dict[int, Exception] = {}
        done: list[TaskResult] = []
        joining: list[TaskRequest] = []
        for i, r in enumerate(requests):
            try:
                self.check(r)
            except (ValueError, TypeError) as exc:  # PromptTooLongError is a ValueError
                refused[i] = exc
                continue
            if r.stop is not None and r.stop.is_set():  # gave up before it began: costs nothing
                done.append(TaskResult(r.tag, "", 1.0, None, True))
            else:
                joining.append(r)
        # every image is encoded before any row joins: a failure leaves the batch as it was (the
        # batcher then admits each request alone, so only the bad one fails)
        bundle = self.model.bundle
        groups = []
        for task in DECODED_TASKS:
            group = [r for r in joining if r.task == task]
            if not group:
                continue
            fused = bool(bundle.spec["tasks"][task].get("question"))
            questions = [r.question or "" for r in group]
            tokens = batch_image_tokens(
                bundle, [r.image for r in group], [q if fused else None for q in questions]
            )
            scored = [i for i, r in enumerate(group) if scores_domain(r)]
            if scored:  # the domain check's image embeddings, from the tokens the captions decode from
                embedded = batch_token_embeddings(bundle, tokens[scored])
                self._embeddings.update((id(group[i]), e) for i, e in zip(scored, embedded, strict=True))
            rows = [
                DecodeRequest(
                    bundle.prompt(task, q), r.max_tokens, None if r.stop is None else r.stop.is_set, r
                )
                for r, q in zip(group, questions, strict=True)
            ]
            groups.append((tokens, rows))
        for tokens, rows in groups:
            self._running.add(tokens, rows)
        return done, refused

    def step(self) -> list[TaskResult]:
        """One token for every active request; the ones that finished, with their text."""
        return [self._result(a) for a in self._running.step()]

    def clear(self) -> list[TaskRequest]:
        """Drop every active request (after a failed step); the requests dropped."""
        self._embeddings.clear()
        return [t for t in self._running.clear() if isinstance(t, TaskRequest)]

    def _result(self, answer: DecodedAnswer) -> TaskResult:
        request = answer.tag
        assert isinstance(request, TaskRequest)
        text = self.model.tokenizer.decode(answer.ids[: request.max_tokens])
        mean = sum(answer.log_probs) / len(answer.log_probs) if answer.log_probs else 0.0
        domain = prefix_score(answer.log_probs) if scores_domain(request) else None
        embedding = self._embeddings.pop(id(request), None)
        return TaskResult(request.tag, text, math.exp(mean), domain, answer.stopped, embedding)
