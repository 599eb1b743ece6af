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

Example::

    tokens = batch_image_tokens(model, images, [None] * len(images))   # (B, N, D)
    prompts = [model.prompt("captioning")] * len(images)
    answers = greedy_batch(model, tokens, prompts, max_new_tokens=32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from mobile_multimodal.export.decode import BundleModel
from mobile_multimodal.export.step_caches import ArrayBatchSteps


class BatchSteps(Protocol):
    """``decoder_step`` for a batch of answers, holding their caches between steps."""

    def step(self, tokens: Sequence[int], position: int) -> np.ndarray:
        """Logits (B, V) after each row's token at ``position`` (valid until the next step)."""
        ...

    def keep(self, rows: Sequence[int]) -> None:
        """Only ``rows`` (indices into the current batch, in order) take further steps."""
        ...


def batch_steps(model: BundleModel, cross_k: np.ndarray, cross_v: np.ndarray) -> BatchSteps:
    """The batch's decoder steps: the runner's own (``batch_steps``: ONNX Runtime's IO binding,
    the caches never crossing into Python) when it has them and no ``on_run`` hook must see every
    call, else the plain contract."""
    shape = model.spec["kv_cache"]["shape"]
    bound = getattr(model.runner, "batch_steps", None)
    if bound is not None and model.on_run is None:
        steps: BatchSteps = bound(cross_k, cross_v, shape)
        return steps
    return ArrayBatchSteps(model.run_graph, cross_k, cross_v, shape)


def _batches(model: BundleModel, graph: str) -> bool:
    """Whether the runner runs ``graph`` on a batch (its batch axis dynamic in this bundle)."""
    batches = getattr(model.runner, "batches", None)
    return bool(batches is not None and batches(graph))


def batch_image_tokens(
    model: BundleModel, images: Sequence[Any], questions: Sequence[str | None]
) -> np.ndarray:
    """Image tokens (B, N, D) of every row: one 'vision' call for the batch when the bundle's
    graph takes one (an INT2 vision call pays its weights' dequantization once, not per image),
    else one call per image."""
    inputs = [model.vision_inputs(image, q) for image, q in zip(images, questions, strict=True)]
    if len(inputs) > 1 and _batches(model, "vision"):
        stacked = {name: np.concatenate([i[name] for i in inputs]) for name in inputs[0]}
        tokens: np.ndarray = model.run_graph("vision", stacked)["image_tokens"]
        return tokens
    return np.concatenate([model.run_graph("vision", i)["image_tokens"] for i in inputs])


def _cross(model: BundleModel, image_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every row's cross-attention keys and values, (L, B, nh, N, hs) each."""
    if len(image_tokens) > 1 and _batches(model, "cross_kv"):
        out = model.run_graph("cross_kv", {"image_tokens": image_tokens})
        return out["cross_k"], out["cross_v"]
    rows = [model.run_graph("cross_kv", {"image_tokens": t[None]}) for t in image_tokens]
    return (
        np.concatenate([c["cross_k"] for c in rows], axis=1),
        np.concatenate([c["cross_v"] for c in rows], axis=1),
    )


def _log_prob(row: np.ndarray, index: int) -> float:
    values = row.astype(np.float64)
    top = values.max()
    return float(values[index] - top - np.log(np.exp(values - top).sum()))


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
    batch of ``len(prompts)`` rows."""
    n = len(prompts)
    if len(image_tokens) != n or (stops is not None and len(stops) != n):
        raise ValueError(f"{len(image_tokens)} images and {n} prompts (and as many stops) expected")
    if n == 0:
        return []
    steps = batch_steps(model, *_cross(model, image_tokens))
    max_len = int(model.spec["kv_cache"]["max_len"])
    rules = [model.rules.for_prompt(p) for p in prompts]
    states = [r.start for r in rules]
    budgets = [min(max_new_tokens + 1, max_len - len(p)) for p in prompts]
    answers: list[list[int]] = [[] for _ in range(n)]
    eos = model.tokenizer.eos
    active = list(range(n))  # the original row of each row still in the batch
    step = 0
    while active:
        fed = [prompts[i][step] if step < len(prompts[i]) else answers[i][-1] for i in active]
        logits = steps.step(fed, step)
        keep: list[int] = []
        for j, i in enumerate(active):
            if step + 1 < len(prompts[i]):  # still reading its prompt
                keep.append(j)
                continue
            stop = stops[i] if stops is not None else None
            if stop is not None and stop():
                continue  # its request gave up: the answer ends with the tokens it has
            nxt = rules[i].pick_in(logits[j], states[i])
            if log_probs is not None:
                log_probs[i].append(_log_prob(logits[j], nxt))
            answers[i].append(nxt)
            states[i] = rules[i].next_state(states[i], nxt)
            if nxt != eos and len(answers[i]) < budgets[i]:
                keep.append(j)
        if len(keep) < len(active):  # finished rows leave: their cache slices are dropped
            if keep:
                steps.keep(keep)
            active = [active[j] for j in keep]
        step += 1
    return answers
