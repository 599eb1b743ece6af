"""Shadow comparison: a sampled fraction of live requests replayed through the fp32 reference.

After a request succeeded (``engine.after_success``), it is sampled with probability
``MOBILE_MM_SHADOW_SAMPLE_RATE``; a sampled request's inputs and the served result go into a
queue of at most ``MOBILE_MM_SHADOW_QUEUE`` entries, or, when that is full, are dropped and
counted (``result="dropped"``): the queue never grows and the request never waits (sampling is a
random draw and a deque append on the event loop). A consumer replays each entry through the
fp32 reference (``reference.py``) in one background slice on the model thread, between requests
(``background_slices.py``), compares, and forgets the entry: no request data outlives its
comparison.

Agreement: the same caption / answer / OCR text (exact match), the same best text for retrieval
with texts, cosine similarity >= 0.99 for an image embedding. Exported as
``quantization_shadow_comparisons_total{quantization_type, task, result}`` (agree, disagree,
dropped) and ``quantization_shadow_agreement_ratio{quantization_type, task}`` over the last
200 comparisons of the task. Only a quantized model is shadowed: an fp32 model is its own
reference.

Example::

    shadow = ShadowComparator(settings, engine, BackgroundSlices(engine), ReferenceModel(settings))
    engine.after_success.append(shadow.offer)
    await shadow.run_forever()
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobile_multimodal.observability import metrics
from mobile_multimodal.serving.background_slices import BackgroundSlices
from mobile_multimodal.serving.engine import BatchKey, InferenceEngine, Job, run_batch
from mobile_multimodal.serving.reference import ReferenceModel
from mobile_multimodal.settings import Settings

log = logging.getLogger(__name__)

WINDOW = 200  # comparisons per task behind the agreement ratio
EMBEDDING_AGREEMENT = 0.99  # cosine similarity at or above which two embeddings agree


@dataclass
class _Sample:
    task: str
    key: BatchKey
    job: Job
    served: dict[str, Any]


def agrees(task: str, served: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether the reference's result agrees with the served one (see the module docstring)."""
    for name in ("caption", "text", "answer"):
        if name in served:
            return bool(served[name] == reference.get(name))
    if "best_index" in served:
        return bool(served["best_index"] == reference.get("best_index"))
    a = np.asarray(served["embedding"], dtype=np.float64)
    b = np.asarray(reference["embedding"], dtype=np.float64)
    cosine = float(a @ b / max(1e-12, float(np.linalg.norm(a) * np.linalg.norm(b))))
    return cosine >= EMBEDDING_AGREEMENT


class ShadowComparator:
    """Samples, queues (bounded) and compares; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        engine: InferenceEngine,
        slices: BackgroundSlices,
        reference: ReferenceModel,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.slices = slices
        self.reference = reference
        self.rate = settings.shadow_sample_rate
        self.capacity = settings.shadow_queue
        self._rng = rng or random.Random()
        self._queue: deque[_Sample] = deque()
        self._wakeup = asyncio.Event()
        self._recent: dict[str, deque[bool]] = {}
        self.enabled = self.rate > 0
        self.compared = 0
        self.dropped = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def offer(self, task: str, key: BatchKey, job: Job, served: dict[str, Any]) -> None:
        """Called on the event loop after a request succeeded: maybe queue it. Returns at once."""
        if not self.enabled or self._rng.random() >= self.rate:
            return
        quant = self._quantization()
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            metrics.SHADOW_COMPARISONS.labels(quant, task, "dropped").inc()
            return
        self._queue.append(_Sample(task, key, job, served))
        self._wakeup.set()

    def forget(self) -> None:
        """Drop the queued samples and the agreement window: they were the previous model's."""
        self._queue.clear()
        self._recent.clear()

    def _quantization(self) -> str:
        model = self.engine.model
        return model.quantization if model is not None else self.settings.quantization

    async def run_forever(self) -> None:
        model = self.engine.model
        if not self.enabled or model is None:
            return
        if model.quantization == "fp32":
            self.enabled = False
            log.info("shadow comparison off: the served model is fp32 (it is its own reference)")
            return
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            sample = self._queue.popleft()
            try:
                await self._compare(sample)
            except Exception as exc:  # one bad replay must not end the comparisons
                log.error("shadow comparison failed for %s: %s: %s", sample.task, type(exc).__name__, exc)
            del sample  # the request's image and result go now

    async def _compare(self, sample: _Sample) -> None:
        served_model = self.engine.model
        if served_model is None:
            return
        ref = await self.reference.get(served_model)
        if ref is None:
            self.enabled = False
            self._queue.clear()
            log.warning("shadow comparison off: %s", self.reference.unavailable)
            return
        job = Job(image=sample.job.image, question=sample.job.question, texts=sample.job.texts)
        [result] = await self.slices.run(lambda: run_batch(ref, sample.key, [job]))
        self.reference.record_memory()  # a longer replay may have grown its KV cache
        agree = agrees(sample.task, sample.served, result)
        quant = served_model.quantization
        metrics.SHADOW_COMPARISONS.labels(quant, sample.task, "agree" if agree else "disagree").inc()
        recent = self._recent.setdefault(sample.task, deque(maxlen=WINDOW))
        recent.append(agree)
        metrics.SHADOW_AGREEMENT.labels(quant, sample.task).set(sum(recent) / len(recent))
        self.compared += 1
