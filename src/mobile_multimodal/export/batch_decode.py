"""Greedy decoding of many answers per ``decoder_step`` call: the bundle's loop, batched.

A phone decodes one answer at a time (``decode.BundleModel.greedy``). A server holds a batch of
requests; one ``decoder_step`` call over B rows saves the B - 1 other calls' overhead (a runtime
call and this loop's Python per row and step), and the rows' matrix products run as one. The
ONNX bundle's ``decoder_step`` has a dynamic batch axis for this (``GraphSpec.batch_axes``); its
rows are independent, each with its own position and cache slice, so this loop computes, row for
row, what ``greedy`` computes:

- every row starts at position 0 together; at step s a row feeds its prompt's token s while it
  has one, then the answer token it picked last (rows with shorter prompts answer sooner);
- a row's answer tokens are picked as ``greedy`` picks them (the task's constraint, first maximum
  on ties), with the same stops: <eos>, ``max_new_tokens + 1`` tokens, the cache's end, or its
  request giving up (``stops[i]()``, read before each answer token);
- a finished row leaves the batch at once (its cache slice is dropped), so a short caption never
  pays for the steps of a long one.

The loop itself is ``running_decode.RunningDecode``: here every row joins at the first step.

Example::

    tokens = batch_image_tokens(model, images, [None] * len(images))   # (B, N, D)
    prompts = [model.prompt("captioning")] * len(images)
    answers = greedy_batch(model, tokens, prompts, max_new_tokens=32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mobile_multimodal.export.decode import BundleModel
from mobile_multimodal.export.running_decode import DecodeRequest, RunningDecode, runs_batches


def _stacked_run(
    model: BundleModel, graph: str, rows: Sequence[dict[str, np.ndarray]], output: str
) -> np.ndarray:
    """``graph``'s ``output`` for every row of inputs (each batch 1), stacked on axis 0: one call
    for all rows when the bundle's graph takes a batch, else one call per row."""
    if len(rows) > 1 and runs_batches(model, graph):
        stacked = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
        out: np.ndarray = model.run_graph(graph, stacked)[output]
        return out
    return np.concatenate([model.run_graph(graph, r)[output] for r in rows])


def batch_image_tokens(
    model: BundleModel, images: Sequence[Any], questions: Sequence[str | None]
) -> np.ndarray:
    """Image tokens (B, N, D) of every row: one 'vision' call for the batch when the bundle's
    graph takes one (an INT2 vision call pays its weights' dequantization once, not per image),
    its questions padded to the longest of them where the graph takes any length (a batch of
    captions passes no question slot), else one call per image."""
    if len(images) > 1 and runs_batches(model, "vision"):
        slots = model.question_slots([len(model.question_words(q)) for q in questions])
        inputs = [model.vision_inputs(image, q, slots) for image, q in zip(images, questions, strict=True)]
        return _stacked_run(model, "vision", inputs, "image_tokens")
    return np.concatenate([model.image_tokens(image, q) for image, q in zip(images, questions, strict=True)])


def batch_line_log_probs(model: BundleModel, images: Sequence[Any]) -> np.ndarray:
    """The CTC log-probabilities (B, frames, classes) of every text-line image: one 'ocr' call for
    the batch where the bundle's graph takes one."""
    return _stacked_run(model, "ocr", [{"line_image": model.line_input(i)} for i in images], "log_probs")


def batch_image_embeddings(model: BundleModel, images: Sequence[Any]) -> np.ndarray:
    """Retrieval embeddings (B, E) of the images: their tokens in one 'vision' call
    (``batch_image_tokens``), then one 'image_embed' call, where the graphs take a batch."""
    return batch_token_embeddings(model, batch_image_tokens(model, images, [None] * len(images)))


def batch_token_embeddings(model: BundleModel, tokens: np.ndarray) -> np.ndarray:
    """Retrieval embeddings (B, E) of images already encoded without a question (B, N, D)."""
    return _stacked_run(model, "image_embed", [{"image_tokens": t[None]} for t in tokens], "embedding")


def batch_text_embeddings(model: BundleModel, texts: Sequence[str]) -> np.ndarray:
    """Retrieval embeddings (T, E) of the texts: one 'text_embed' call where the graph takes a batch."""
    return _stacked_run(model, "text_embed", [model.text_inputs(t) for t in texts], "embedding")


def greedy_batch(
    model: BundleModel,
    image_tokens: np.ndarray,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    stops: Sequence[Callable[[], bool] | None] | None = None,
    log_probs: Sequence[list[float]] | None = None,
) -> list[list[int]]:
    """Each row's greedy answer ids (<eos> included when reached), as ``model.greedy`` would give
    them one row at a time, for the rows' ``image_tokens`` (B, N, D) and ``prompts``; ``stops``
    and ``log_probs`` are per row, as in ``greedy``. The runner's ``decoder_step`` must accept a
    batch of ``len(prompts)`` rows. The rows start together and leave as they finish
    (``running_decode.RunningDecode``, which a server's continuous batching also drives)."""
    n = len(prompts)
    if len(image_tokens) != n or (stops is not None and len(stops) != n):
        raise ValueError(f"{len(image_tokens)} images and {n} prompts (and as many stops) expected")
    running = RunningDecode(model)
    running.add(
        image_tokens,
        [
            DecodeRequest(list(p), max_new_tokens, stops[i] if stops else None, i)
            for i, p in enumerate(prompts)
        ],
    )
    answers: list[list[int]] = [[] for _ in range(n)]
    while len(running):
        for done in running.step():
            answers[done.tag] = done.ids
            if log_probs is not None:
                log_probs[done.tag].extend(done.log_probs)
    return answers
