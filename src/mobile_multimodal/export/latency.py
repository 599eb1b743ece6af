"""Per-task latency of a model at batch 1: the exported bundle in its runtime, or PyTorch eager.

Validation records it for both sides (``validation.latency_s`` and
``validation.reference_latency_s`` in the manifest), so every export says how its runtime compares
with PyTorch on this machine; export_telemetry turns the first into
``mobile_export_runtime_latency_seconds`` (the dashboard's runtime comparison).

What is timed is one task call on one example, as an app makes it (a caption is a full greedy
decode; retrieval embeds one image and one text), after one untimed warm-up call; the mean over
``examples`` held-out examples (the first of each split, loaded before timing starts).

Example::

    task_latency(BundleModel(bundle, runner), ["captioning", "ocr"])   # {'captioning': 0.012, ...}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mobile_multimodal.data.splits import Example, load_eval_split

LATENCY_EXAMPLES = 4


class TaskModel(Protocol):
    """What both MobileMultiModalLLM and the bundle driver (decode.BundleModel) offer."""

    def generate_captions(self, images: Sequence[Any]) -> list[str]: ...
    def extract_texts(self, images: Sequence[Any]) -> list[str]: ...
    def answer_questions(self, images: Sequence[Any], questions: Sequence[str]) -> list[str]: ...
    def get_image_embeddings(self, images: Sequence[Any]) -> Any: ...
    def get_text_embeddings(self, texts: Sequence[str]) -> Any: ...


def _call(model: TaskModel, task: str) -> Callable[[Example], object]:
    if task == "captioning":
        return lambda e: model.generate_captions([e.image])
    if task in ("ocr", "ocr_unseen_fonts"):
        return lambda e: model.extract_texts([e.image])
    if task in ("vqa", "easy_vqa"):
        return lambda e: model.answer_questions([e.image], [e.question or ""])
    if task == "retrieval":
        return lambda e: (model.get_image_embeddings([e.image]), model.get_text_embeddings([e.text or ""]))
    raise ValueError(f"no latency call for task {task!r}")


def task_latency(
    model: TaskModel, tasks: Sequence[str], examples: int = LATENCY_EXAMPLES
) -> dict[str, float]:
    """Task -> mean wall seconds of one batch-1 call."""
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    out: dict[str, float] = {}
    for task in tasks:
        call = _call(model, task)
        data = load_eval_split(task, examples)
        call(data[0])  # warm-up: first-call allocations and lazy initialisation are not latency
        start = time.perf_counter()
        for example in data:
            call(example)
        out[task] = (time.perf_counter() - start) / len(data)
    return out
