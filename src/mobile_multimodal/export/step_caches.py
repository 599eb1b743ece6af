"""The decoder loop's KV cache as an app holds it, and the plain step contract over it.

Bundle version 2's ``decoder_step`` reads one cache buffer per layer and returns only the new
token's keys/values; the app keeps the buffers and writes each step's ``new_k``/``new_v`` into
slot ``position`` (``LayerCaches``; each row may be at its own position, and rows may join and
leave between steps: a server's running batch). Where the bundle has a ``prefill`` graph, rows
start with its keys/values in their first slots (``PromptCache``) and step from their prompt's
last token. ``ArrayBatchSteps`` / ``ArraySteps`` drive any
``GraphRunner`` that way, handing the buffers to every ``run`` call (what validation and hooks
see); a runner may keep them bound instead (``serving/onnx_sessions.py``'s IO binding over the
same ``LayerCaches``). Nothing of the model package is imported: this is the bundle's contract.

Example::

    steps = ArraySteps(runner.run, runner.run("cross_kv", {"image_tokens": tokens}), shape)
    logits = steps.step(token=1, position=0)        # (1, V)
    self_k, self_v = steps.cache                    # (L, 1, nh, S, hs) each, for comparisons
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

# 'prefill''s prompt_k / prompt_v (L, B, nh, P, hs): the first P slots of B rows' caches
PromptCache = tuple[np.ndarray, np.ndarray]


class DecoderSteps(Protocol):
    """``decoder_step`` for one answer, holding its KV cache between steps."""

    def step(self, token: int, position: int) -> np.ndarray:
        """Logits (1, V) for the token after ``token`` at ``position`` (valid until the next step)."""
        ...


class LayerCaches:
    """The fixed-size self-attention cache of B rows as the app holds it: one C-ordered
    (B, nh, S, hs) buffer per layer for keys and one for values (bundle.json ``kv_cache``; here
    the layers' views of one (L, B, nh, S, hs) array each), and the rows' cross-attention
    keys/values split per layer, all fed to ``decoder_step`` as they are; each step's
    new_k/new_v go into slot ``position`` (``write``, one assignment for all layers), the only
    per-step copy.
    ``prompt``: the rows' first slots as 'prefill' computed them (the rest start at zero)."""

    def __init__(
        self,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        cache_shape: Sequence[int],
        prompt: PromptCache | None = None,
    ) -> None:
        layers, _, heads, slots, head_dim = (int(d) for d in cache_shape)
        rows = cross_k.shape[1]
        # C order: ONNX Runtime binds a buffer in place only when it is contiguous
        self.cross_k = [np.ascontiguousarray(c, dtype=np.float32) for c in cross_k]
        self.cross_v = [np.ascontiguousarray(c, dtype=np.float32) for c in cross_v]
        self._use(
            np.zeros((layers, rows, heads, slots, head_dim), dtype=np.float32),
            np.zeros((layers, rows, heads, slots, head_dim), dtype=np.float32),
        )
        if prompt is not None:
            self._fill_prompt(0, prompt)

    def _use(self, k: np.ndarray, v: np.ndarray) -> None:
        """Hold every layer's cache in one (L, B, nh, S, hs) array each for keys and values: the
        per-layer buffers are its first-axis views (each C-ordered), and a step's new keys/values
        go into all layers in one assignment instead of one per layer."""
        self._all_k, self._all_v = k, v
        self.k, self.v = list(k), list(v)

    def _fill_prompt(self, first_row: int, prompt: PromptCache) -> None:
        """Slots 0..P-1 of rows ``first_row``.. get 'prefill''s keys/values (L, B', nh, P, hs)."""
        prompt_k, prompt_v = prompt
        rows, length = prompt_k.shape[1], prompt_k.shape[3]
        if first_row + rows != self.k[0].shape[0] or length > self.k[0].shape[2]:
            shape = self.k[0].shape
            raise ValueError(f"a prompt cache of {rows} rows and {length} slots does not fit {shape}")
        for layer, (k, v) in enumerate(zip(self.k, self.v, strict=True)):
            k[first_row:, :, :length] = prompt_k[layer]
            v[first_row:, :, :length] = prompt_v[layer]

    def inputs(self) -> dict[str, np.ndarray]:
        """decoder_step's per-layer inputs (``self_k_0`` .. ``cross_v_{L-1}``), by name."""
        buffers = {"self_k": self.k, "self_v": self.v, "cross_k": self.cross_k, "cross_v": self.cross_v}
        return {f"{prefix}_{i}": a for prefix, arrays in buffers.items() for i, a in enumerate(arrays)}

    def write(self, new_k: np.ndarray, new_v: np.ndarray, position: int | Sequence[int]) -> None:
        """Put the step's keys/values (L, B, nh, 1, hs) into slot ``position`` of every row, or
        into each row's own slot when ``position`` gives one per row (rows that joined a running
        batch at different steps)."""
        slot = _common_slot(position)
        count = self.k[0].shape[0]  # the rows in use: the first ``count`` of the arrays (keep)
        keys, values = self._all_k[:, :count], self._all_v[:, :count]
        if slot is not None:
            keys[:, :, :, slot] = new_k[:, :, :, 0]
            values[:, :, :, slot] = new_v[:, :, :, 0]
        else:  # (rows, positions) picks one slot per row; those index axes come first: (B, L, nh, hs)
            rows = np.arange(count)
            keys[:, rows, :, position] = new_k[:, :, :, 0].transpose(1, 0, 2, 3)
            values[:, rows, :, position] = new_v[:, :, :, 0].transpose(1, 0, 2, 3)

    def join(self, cross_k: np.ndarray, cross_v: np.ndarray, prompt: PromptCache | None = None) -> None:
        """Add rows (their cross keys/values (L, B', nh, N, hs)) after the current ones, with
        empty caches (a row's slots from its position on are never read, so zeros are its start)
        or with their prompt's keys/values in the first slots."""
        extra, first = cross_k.shape[1], self.k[0].shape[0]

        def grown(arrays: list[np.ndarray], new: np.ndarray) -> list[np.ndarray]:
            pairs = zip(arrays, new, strict=True)
            return [np.ascontiguousarray(np.concatenate([a, b]), dtype=np.float32) for a, b in pairs]

        def grown_cache(stacked: np.ndarray) -> np.ndarray:  # (L, B, ...) -> (L, B + extra, ...), zeros
            current = stacked[:, :first]
            tail = np.zeros((current.shape[0], extra, *current.shape[2:]), dtype=np.float32)
            return np.concatenate([current, tail], axis=1)

        self._use(grown_cache(self._all_k), grown_cache(self._all_v))
        self.cross_k, self.cross_v = grown(self.cross_k, cross_k), grown(self.cross_v, cross_v)
        if prompt is not None:
            self._fill_prompt(first, prompt)

    def keep(self, rows: Sequence[int]) -> None:
        """Only ``rows`` stay, in that order. When every row that moves comes from past the kept
        count (the order ``prefix_order`` gives), the buffers are compacted in place and kept as
        views of their first rows, still C-ordered: only the moved rows are copied, not the whole
        batch's caches and image keys/values each time a row leaves. Any other order copies into
        fresh buffers."""
        index = list(rows)
        count = len(index)
        if all(j == i or j >= count for i, j in enumerate(index)):
            moved = [(i, j) for i, j in enumerate(index) if j != i]
            for to, source in moved:  # sources lie past the kept rows: none is overwritten
                self._all_k[:, to] = self._all_k[:, source]
                self._all_v[:, to] = self._all_v[:, source]
            self.k = [a[:count] for a in self._all_k]
            self.v = [a[:count] for a in self._all_v]
            for arrays in (self.cross_k, self.cross_v):
                for n, a in enumerate(arrays):
                    for to, source in moved:
                        a[to] = a[source]
                    arrays[n] = a[:count]
            return

        def kept(arrays: list[np.ndarray]) -> list[np.ndarray]:
            return [np.ascontiguousarray(a[index]) for a in arrays]

        self._use(np.ascontiguousarray(self._all_k[:, index]), np.ascontiguousarray(self._all_v[:, index]))
        self.cross_k, self.cross_v = kept(self.cross_k), kept(self.cross_v)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.k, *self.v, *self.cross_k, *self.cross_v))

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        """(self_k, self_v) as (L, B, nh, S, hs), copies: for comparing two decoders' caches."""
        count = self.k[0].shape[0]
        return self._all_k[:, :count].copy(), self._all_v[:, :count].copy()


def prefix_order(kept: Sequence[int]) -> list[int]:
    """``kept`` (ascending row indices) ordered for ``LayerCaches.keep``'s in-place compaction:
    a kept row already among the first ``len(kept)`` places stays there, and the kept rows past
    them fill the places of the rows that left (the batch's order changes; each row keeps its
    own caches)."""
    count = len(kept)
    stay = {j for j in kept if j < count}
    movers = iter(j for j in kept if j >= count)
    return [i if i in stay else next(movers) for i in range(count)]


def _common_slot(position: int | Sequence[int]) -> int | None:
    """The one slot every row writes, or None when rows are at different positions."""
    if isinstance(position, int | np.integer):
        return int(position)
    first = int(position[0])
    return first if all(int(p) == first for p in position) else None


def position_array(position: int | Sequence[int], rows: int) -> np.ndarray:
    """decoder_step's ``position`` input (B,): one for every row, or each row's own."""
    if isinstance(position, int | np.integer):
        return np.full(rows, int(position), dtype=np.int64)
    if len(position) != rows:
        raise ValueError(f"{len(position)} positions for {rows} rows")
    return np.asarray(position, dtype=np.int64)


class ArrayBatchSteps:
    """The plain contract, which every runtime can follow, for B rows (a phone runs one): zero
    caches (``kv_cache.layer_shape`` with B rows per layer) and the images' per-layer cross keys
    and values go in with every step, and each step's ``new_k`` / ``new_v`` are written into slot
    ``position`` of the caches (``LayerCaches``). ``keep`` drops the rows that finished (a
    server's batch, ``batch_decode.py``). The caches are updated in place after each call: a
    ``run`` hook that keeps a call's inputs copies them (validation's recorder does)."""

    def __init__(
        self,
        run: Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]],
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        cache_shape: Sequence[int],
        prompt: PromptCache | None = None,
    ) -> None:
        self._run = run
        self.caches = LayerCaches(cross_k, cross_v, cache_shape, prompt)

    def step(self, tokens: Sequence[int], position: int | Sequence[int]) -> np.ndarray:
        """Logits (B, V) after each row's token at ``position`` (one for all, or one per row)."""
        out = self._run(
            "decoder_step",
            {
                "token": np.array(tokens, dtype=np.int64)[:, None],
                "position": position_array(position, len(tokens)),
                **self.caches.inputs(),
            },
        )
        self.caches.write(out["new_k"], out["new_v"], position)
        return out["logits"]

    def keep(self, rows: Sequence[int]) -> None:
        self.caches.keep(rows)

    def join(self, cross_k: np.ndarray, cross_v: np.ndarray, prompt: PromptCache | None = None) -> None:
        self.caches.join(cross_k, cross_v, prompt)

    @property
    def cache(self) -> tuple[np.ndarray, np.ndarray]:
        """(self_k, self_v) as (L, B, nh, S, hs), after the last step."""
        return self.caches.stacked()


class ArraySteps:
    """The plain contract for one answer (a ``DecoderSteps``): an ``ArrayBatchSteps`` of one row."""

    def __init__(
        self,
        run: Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]],
        cross: dict[str, np.ndarray],
        cache_shape: Sequence[int],
        prompt: PromptCache | None = None,
    ) -> None:
        self._batch = ArrayBatchSteps(run, cross["cross_k"], cross["cross_v"], cache_shape, prompt)

    def step(self, token: int, position: int) -> np.ndarray:
        return self._batch.step([token], position)

    @property
    def cache(self) -> tuple[np.ndarray, np.ndarray]:
        """(self_k, self_v) as (L, 1, nh, S, hs), after the last step."""
        return self._batch.cache
