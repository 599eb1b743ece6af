"""A running batch of the bundle's greedy decodes: rows join and leave at every ``decoder_step``.

``batch_decode.greedy_batch`` decodes a fixed set of rows to their end. A server doing continuous
(iteration-level) batching needs more: a request that arrives while others decode joins at the
next step instead of waiting for the whole batch. The bundle's contract allows it as it stands:
``decoder_step`` takes each row's own ``position`` (B,), and a row reads only its cache slots
before its position, so a joining row starts on a cache of its own beside rows deep into their
answers. Where the bundle has the optional ``prefill`` graph (ONNX), the rows that join together
have their prompts, all but the last token, read in one call (``BundleModel.prompt_cache``) and
each starts at its own prompt's last position; without it a row reads its prompt one token per
step from position 0, as the phone's loop does, while the others generate. A step's tokens are
picked for all answering rows in one numpy pass (``decode_rules.pick_rows``) and rows that finish
leave by an in-place compaction of the caches (``step_caches.prefix_order``).

Each row computes what ``BundleModel.greedy`` computes for it alone (the task's constraint, first
maximum on ties, the same stops), so the answers are the ones the export's validation scored:
``tests/serving/test_onnx_runtime.py`` joins rows at different steps and compares every row with
its own decode, on the plain contract and on ONNX Runtime's bound buffers.

Example::

    running = RunningDecode(model)                            # a decode.BundleModel
    running.add(image_tokens, [DecodeRequest(prompt, max_new_tokens=32, tag="a")])
    while len(running):
        for answer in running.step():                         # one token for every row
            print(answer.tag, answer.ids)
        # ... new rows may be added here, at any step
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mobile_multimodal.export.decode import BundleModel
from mobile_multimodal.export.decode_rules import pick_rows
from mobile_multimodal.export.step_caches import ArrayBatchSteps, PromptCache, prefix_order


class BatchSteps(Protocol):
    """``decoder_step`` for a batch of answers, holding their caches between steps."""

    def step(self, tokens: Sequence[int], position: int | Sequence[int]) -> np.ndarray:
        """Logits (B, V) after each row's token at its position (valid until the next step)."""
        ...

    def keep(self, rows: Sequence[int]) -> None:
        """Only ``rows`` (indices into the current batch, in order) take further steps."""
        ...

    def join(self, cross_k: np.ndarray, cross_v: np.ndarray, prompt: PromptCache | None = None) -> None:
        """Rows with these cross keys/values (L, B', nh, N, hs) join after the current ones, their
        caches' first slots from ``prompt`` ('prefill''s output) when given."""
        ...


def batch_steps(
    model: BundleModel, cross_k: np.ndarray, cross_v: np.ndarray, prompt: PromptCache | None = None
) -> BatchSteps:
    """The batch's decoder steps: the runner's own (``batch_steps``: ONNX Runtime's IO binding,
    the caches never crossing into Python) when it has them and no ``on_run`` hook must see every
    call, else the plain contract."""
    shape = model.spec["kv_cache"]["shape"]
    bound = getattr(model.runner, "batch_steps", None)
    if bound is not None and model.on_run is None:
        steps: BatchSteps = bound(cross_k, cross_v, shape, prompt)
        return steps
    return ArrayBatchSteps(model.run_graph, cross_k, cross_v, shape, prompt)


@dataclass
class DecodeRequest:
    """One answer to decode: its prompt ids, at most ``max_new_tokens`` answer tokens (one more
    lets <eos> end it, as ``greedy``), ``stop`` read before each answer token (True: it ends
    with the tokens it has), ``tag``: the caller's handle, returned as is."""

    prompt: list[int]
    max_new_tokens: int
    stop: Callable[[], bool] | None = None
    tag: Any = None


@dataclass
class DecodedAnswer:
    """A row that left: its answer ids (<eos> included when reached), each one's log-probability,
    and whether its stop ended it."""

    tag: Any
    ids: list[int]
    log_probs: list[float]
    stopped: bool


@dataclass
class _Row:
    request: DecodeRequest
    budget: int
    rule: Any
    state: Any
    position: int = 0
    ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)

    def answer(self, stopped: bool = False) -> DecodedAnswer:
        return DecodedAnswer(self.request.tag, self.ids, self.log_probs, stopped)


def _log_prob(row: np.ndarray, index: int) -> float:
    """One row's ``_log_probs``: the log-softmax of ``row`` (V,) at ``index``."""
    values = row.astype(np.float64)
    top = values.max()
    return float(values[index] - top - np.log(np.exp(values - top).sum()))


def _log_probs(logits: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Each row's log-probability (float64) of its picked id: the log-softmax of ``logits``
    (R, V) at ``picked`` (R,), for every row in one pass."""
    values = logits.astype(np.float64)
    top = values.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(values - top).sum(axis=1))
    return np.asarray(values[np.arange(len(values)), picked] - top[:, 0] - log_z)


# From this many answering rows on, a step's tokens are picked in one numpy pass (measured at 16
# rows: 64 against 197 us a step); below, row by row (one row: 12 against 33 us, a phone's or a
# lone request's every token)
PICK_ROWS_FROM = 3


def _picks(logits: np.ndarray, answering: list[int], rows: list[_Row]) -> list[tuple[int, int, float]]:
    """(row index, greedy id, its log-probability) for each answering row: ``pick_in`` and the
    log-softmax row by row, or ``pick_rows`` and ``_log_probs`` for all at once (same ids; the
    log-probabilities agree to float64 rounding)."""
    if len(answering) < PICK_ROWS_FROM:
        out = []
        for j in answering:
            row = rows[j]
            nxt = row.rule.pick_in(logits[j], row.state)
            out.append((j, nxt, _log_prob(logits[j], nxt)))
        return out
    chosen = [rows[j] for j in answering]
    picked = pick_rows(logits[answering], [r.rule for r in chosen], [r.state for r in chosen])
    return list(zip(answering, picked.tolist(), _log_probs(logits[answering], picked).tolist(), strict=True))


def runs_batches(model: BundleModel, graph: str) -> bool:
    """Whether the runner runs ``graph`` on a batch (its batch axis dynamic in this bundle)."""
    batches = getattr(model.runner, "batches", None)
    return bool(batches is not None and batches(graph))


def cross_kv(model: BundleModel, image_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every row's cross-attention keys and values, (L, B, nh, N, hs) each: one 'cross_kv' call
    when the bundle's graph takes a batch, else one per row."""
    if len(image_tokens) > 1 and runs_batches(model, "cross_kv"):
        out = model.run_graph("cross_kv", {"image_tokens": image_tokens})
        return out["cross_k"], out["cross_v"]
    rows = [model.run_graph("cross_kv", {"image_tokens": t[None]}) for t in image_tokens]
    return (
        np.concatenate([c["cross_k"] for c in rows], axis=1),
        np.concatenate([c["cross_v"] for c in rows], axis=1),
    )


class RunningDecode:
    """See the module docstring. Not thread-safe: one driver calls ``add`` and ``step``."""

    def __init__(self, model: BundleModel) -> None:
        self.model = model
        self._max_len = int(model.spec["kv_cache"]["max_len"])
        self._eos = model.tokenizer.eos
        self._rows: list[_Row] = []
        self._steps: BatchSteps | None = None

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def tags(self) -> list[Any]:
        """The tags of the rows decoding now, in batch order."""
        return [r.request.tag for r in self._rows]

    def add(self, image_tokens: np.ndarray, requests: Sequence[DecodeRequest]) -> None:
        """Rows for ``requests`` (their images' tokens (B, N, D)) join at the next step."""
        if len(image_tokens) != len(requests):
            raise ValueError(f"{len(image_tokens)} images for {len(requests)} requests")
        if not requests:
            return
        rows = []
        for request in requests:
            if not 0 < len(request.prompt) <= self._max_len:
                raise ValueError(
                    f"a prompt of {len(request.prompt)} tokens (the cache holds {self._max_len})"
                )
            rule = self.model.rules.for_prompt(request.prompt)
            budget = min(request.max_new_tokens + 1, self._max_len - len(request.prompt))
            rows.append(_Row(request, budget, rule, rule.start))
        cross_k, cross_v = cross_kv(self.model, image_tokens)
        # one 'prefill' call for the rows joining (its batch axis is dynamic: graphs.BATCHED_GRAPHS)
        tokens = self.model.prefill_tokens([r.request.prompt for r in rows])
        prompt = self.model.prompt_cache({"cross_k": cross_k, "cross_v": cross_v}, tokens)
        for row in rows:
            row.position = self.model.prefilled(row.request.prompt) if prompt is not None else 0
        if self._steps is None:
            self._steps = batch_steps(self.model, cross_k, cross_v, prompt)
        else:
            self._steps.join(cross_k, cross_v, prompt)
        self._rows += rows

    def step(self) -> list[DecodedAnswer]:
        """One token for every row; the rows that finished (they have left the batch)."""
        if self._steps is None or not self._rows:
            return []
        fed = [
            r.request.prompt[r.position] if r.position < len(r.request.prompt) else r.ids[-1]
            for r in self._rows
        ]
        positions = [r.position for r in self._rows]
        # one position for all when the rows are level (a batch that started together)
        logits = self._steps.step(fed, positions[0] if len(set(positions)) == 1 else positions)
        # rows still reading their prompt take no token; a row whose request gave up ends as it
        # is; every other row picks its token (_picks)
        answering: list[int] = []
        stopped: set[int] = set()
        for j, row in enumerate(self._rows):
            row.position += 1
            if row.position < len(row.request.prompt):
                continue  # still reading its prompt
            if row.request.stop is not None and row.request.stop():
                stopped.add(j)
            else:
                answering.append(j)
        for j, nxt, log_prob in _picks(logits, answering, self._rows):
            row = self._rows[j]
            row.log_probs.append(log_prob)
            row.ids.append(nxt)
            row.state = row.rule.next_state(row.state, nxt)
        keep: list[int] = []
        done: list[DecodedAnswer] = []
        for j, row in enumerate(self._rows):
            if j in stopped:
                done.append(row.answer(stopped=True))
            elif row.position < len(row.request.prompt) or (
                row.ids[-1] != self._eos and len(row.ids) < row.budget
            ):
                keep.append(j)
            else:
                done.append(row.answer())
        if len(keep) < len(self._rows):  # finished rows leave: their cache slices are dropped
            order = prefix_order(keep)  # the rows past the survivors move into the gaps
            self._rows = [self._rows[j] for j in order]
            if order:
                self._steps.keep(order)
            else:
                self._steps = None  # the buffers go with the last row
        return done

    def clear(self) -> list[Any]:
        """Drop every row (after a failed step); their tags."""
        tags = self.tags
        self._rows, self._steps = [], None
        return tags
