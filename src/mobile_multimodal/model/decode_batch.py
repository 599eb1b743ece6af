"""Iteration-level (continuous) greedy decoding: rows join and leave a running batch at every token.

:meth:`TextDecoder.generate` decodes a batch to its end: a short caption waits for the longest
row, and a new prompt waits for the whole batch. :class:`DecodeBatch` keeps the batch open
instead. :meth:`DecodeBatch.add` prefills new rows (their prompts, and the cross-attention K/V of
their image tokens, which the caller computed in one batched encoder pass) and merges them into
the running batch; each :meth:`DecodeBatch.step` emits one token for every active row and returns
the rows that finished (``<eos>``, their own token budget, or their stop signal), which leave at
once. Each row's tokens, confidence score and prefix score are those ``generate`` gives the same
prompt alone (``tests/model/test_decode_batch.py`` checks it, fp32 and INT2).

KV caches: one tensor per layer for the whole batch, (rows, heads, columns, head size), left-
padded, with a key-valid mask (rows, columns). A row's valid keys are always its last columns
(every step appends one column for every row), so a joining row shorter than the batch is padded
on the left, a longer one pads the others, and the leading columns no row needs any more (its
longest row left) are dropped after each step. A padded key is masked out of attention, so a row
attends to exactly the keys it would alone, at the same positions (each row counts its own).

Packed (INT2/INT4/INT8) layers dequantize once for the batch's lifetime, not per step: the batch
holds a weight-reuse dict (``weight_reuse.py``) while it has rows, used by every add and step, and
dropped when the last row leaves (resident memory returns to the packed weights).

Example::

    batch = DecodeBatch(model.network.decoder, eos_id=tok.eos_id, pad_id=tok.pad_id)
    batch.add([DecodeRow(prompt, max_new_tokens=33, tag="a")], image_tokens)   # (1, N, D)
    while len(batch):
        for row in batch.step():           # one token for every active row
            print(row.tag, row.tokens)     # a row that finished left the batch
    batch.add([DecodeRow(other, 9, allowed=rule, stop=event, scores=True, tag="b")], tokens)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mobile_multimodal.model.constraints import TaskRule
from mobile_multimodal.model.decoder import StopSignal, TextDecoder
from mobile_multimodal.model.layers import KVCache
from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.model.weight_reuse import reuse_weights


@dataclass
class DecodeRow:
    """One prompt to decode. ``max_new_tokens``: the row's budget (clamped to the context as
    ``generate`` clamps it); ``allowed``: its task's constraint (constrained decoding: the row
    keeps its automaton state, one mask row and one lookup per token), None = any; ``stop``:
    read before every step, a set signal ends the row with the tokens it has; ``scores``:
    measure the mean token log-probability; ``prefix_tokens`` (> 0): the same over the first
    that many tokens; ``tag``: the caller's handle, returned as is."""

    prompt: list[int]
    max_new_tokens: int
    allowed: TaskRule | None = None
    stop: StopSignal | None = None
    scores: bool = False
    prefix_tokens: int = 0
    tag: object = None


@dataclass
class FinishedRow:
    """A row that left the batch: its tokens (``<eos>`` included when it ended on one), its mean
    token log-probability and prefix score (None unless asked; 0.0 for no token, as ``generate``),
    and whether its stop signal ended it."""

    tag: object
    tokens: list[int]
    score: float | None
    prefix_score: float | None
    stopped: bool


@dataclass
class _Live:
    row: DecodeRow
    budget: int
    out: list[int] = field(default_factory=list)
    logps: list[Tensor] = field(default_factory=list)  # the chosen tokens' log-probs (0-d)
    dead_since: int = -1  # the step it finished at; its tensors' row goes at the next compaction
    state: int = 0  # its constraint's automaton state after ``out`` (when it has a constraint)

    def __post_init__(self) -> None:
        if self.row.allowed is not None:
            self.state = self.row.allowed.start

    def finish(self, stopped: bool) -> FinishedRow:
        def mean(n: int) -> float:
            return float(torch.stack(self.logps[:n]).mean()) if n else 0.0

        score = mean(len(self.out)) if self.row.scores else None
        n_prefix = self.row.prefix_tokens
        prefix = mean(min(len(self.out), n_prefix)) if n_prefix > 0 else None
        return FinishedRow(self.row.tag, self.out, score, prefix, stopped)


def _pad_left(t: Tensor, columns: int, dim: int, value: float | bool = 0) -> Tensor:
    if columns <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = columns
    return torch.cat([torch.full(shape, value, dtype=t.dtype, device=t.device), t], dim=dim)


class DecodeBatch:
    """A running greedy decode to which rows are added and from which finished rows leave."""

    def __init__(self, decoder: TextDecoder, eos_id: int, pad_id: int) -> None:
        self.decoder = decoder
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.steps = 0  # decode steps run (a step with no row runs nothing)
        self._rows: list[_Live] = []
        self._caches: list[KVCache] = []  # per layer (rows, heads, columns, head size)
        self._image_kv: list[KVCache] = []  # per layer (rows, heads, image tokens, head size)
        self._valid = torch.zeros(0, 0, dtype=torch.bool)  # (rows, columns)
        self._pending = torch.zeros(0, dtype=torch.long)  # (rows,) each row's next token
        self._pending_logp = torch.zeros(0)  # (rows,) its log-probability (rows that score)
        self._weights: dict[nn.Module, Tensor] | None = None

    def __len__(self) -> int:
        """Active rows (a finished row has left, though its tensors may wait for compaction)."""
        return sum(1 for r in self._rows if r.dead_since < 0)

    @property
    def tags(self) -> list[object]:
        return [r.row.tag for r in self._rows if r.dead_since < 0]

    @property
    def columns(self) -> int:
        """KV-cache columns held now (the longest active row's keys)."""
        return int(self._valid.shape[1]) if self._rows else 0

    # --- joining --------------------------------------------------------------------------
    @torch.inference_mode()
    def add(self, rows: Sequence[DecodeRow], image_tokens: Tensor) -> list[FinishedRow]:
        """Prefill ``rows`` (image_tokens: (len(rows), N, D), row i's image) and let them join.
        Rows whose stop signal is already set finish at once, with no token (returned). Raises
        PromptTooLongError / ValueError before changing anything if any row is invalid."""
        if len(rows) != image_tokens.shape[0]:
            raise ValueError(f"{image_tokens.shape[0]} images for {len(rows)} rows")
        for row in rows:
            self._check(row)
        keep = [i for i, r in enumerate(rows) if not (r.stop is not None and r.stop.is_set())]
        done = [_Live(r, 0).finish(stopped=True) for i, r in enumerate(rows) if i not in keep]
        if not keep:
            return done
        joining = [
            _Live(rows[i], min(rows[i].max_new_tokens, self.decoder.max_len - len(rows[i].prompt)))
            for i in keep
        ]
        if self._weights is None:
            self._weights = {}
        self._compact()  # the joining rows' merge copies every tensor anyway
        with reuse_weights(self._weights):
            caches, image_kv, valid, logits = self._prefill(
                [j.row.prompt for j in joining], image_tokens[keep]
            )
            pending, logp = self._choose(logits, joining)
        self._merge(joining, caches, image_kv, valid, pending, logp)
        return done

    def _check(self, row: DecodeRow) -> None:
        if row.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {row.max_new_tokens}")
        if len(row.prompt) < 1:
            raise ValueError("a prompt must have at least one token")
        limit = self.decoder.max_len - 1
        if len(row.prompt) > limit:
            raise PromptTooLongError(
                f"a prompt of {len(row.prompt)} tokens leaves no room to generate: the decoder's "
                f"context is {self.decoder.max_len} tokens (max_text_len)",
                tokens=len(row.prompt),
                limit=limit,
            )

    def _prefill(
        self, prompts: list[list[int]], image_tokens: Tensor
    ) -> tuple[list[KVCache], list[KVCache], Tensor, Tensor]:
        """The prompts' pass, exactly as ``TextDecoder.generate`` runs it (left-padded)."""
        caches, image_kv, valid, _, logits = self.decoder.prefill(prompts, image_tokens, self.pad_id)
        return caches, image_kv, valid, logits

    def _choose(self, logits: Tensor, rows: list[_Live]) -> tuple[Tensor, Tensor]:
        """Each row's greedy token over its allowed ones (the first maximum, as argmax), and its
        log-probability under the unmasked softmax (computed only when a row scores)."""
        if any(r.row.allowed is not None for r in rows):
            mask = torch.zeros_like(logits)
            for i, r in enumerate(rows):
                if r.row.allowed is not None and r.dead_since < 0:
                    mask[i] = r.row.allowed.mask(r.state).to(mask.device, mask.dtype)
            tokens = (logits + mask).argmax(-1)
        else:
            tokens = logits.argmax(-1)
        if any(r.row.scores or r.row.prefix_tokens > 0 for r in rows):
            logp = logits.float().log_softmax(-1).gather(1, tokens[:, None])[:, 0]
        else:
            logp = torch.zeros(len(rows), device=logits.device)
        return tokens, logp

    def _merge(
        self,
        joining: list[_Live],
        caches: list[KVCache],
        image_kv: list[KVCache],
        valid: Tensor,
        pending: Tensor,
        logp: Tensor,
    ) -> None:
        if not self._rows:
            self._rows, self._caches, self._image_kv = joining, caches, image_kv
            self._valid, self._pending, self._pending_logp = valid, pending, logp
            return
        ours, theirs = self._valid.shape[1], valid.shape[1]
        width = max(ours, theirs)

        def cat(a: Tensor, b: Tensor, dim: int, value: float | bool = 0) -> Tensor:
            return torch.cat(
                [_pad_left(a, width - ours, dim, value), _pad_left(b, width - theirs, dim, value)]
            )

        self._caches = [
            (cat(k, nk, 2), cat(v, nv, 2)) for (k, v), (nk, nv) in zip(self._caches, caches, strict=True)
        ]
        self._valid = cat(self._valid, valid, 1, False)
        self._image_kv = [
            (torch.cat([k, nk]), torch.cat([v, nv]))
            for (k, v), (nk, nv) in zip(self._image_kv, image_kv, strict=True)
        ]
        self._pending = torch.cat([self._pending, pending])
        self._pending_logp = torch.cat([self._pending_logp, logp])
        self._rows = self._rows + joining

    # --- stepping -------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[FinishedRow]:
        """One token for every active row; returns the rows that finished (they have left)."""
        if not len(self):
            return []
        self.steps += 1
        finished: list[FinishedRow] = []
        pending = self._pending.tolist()
        for i, live in enumerate(self._rows):
            if live.dead_since >= 0:
                continue
            if live.row.stop is not None and live.row.stop.is_set():
                finished.append(live.finish(stopped=True))
                live.dead_since = self.steps
                continue
            live.out.append(int(pending[i]))
            if live.row.allowed is not None:
                live.state = live.row.allowed.after(live.state, int(pending[i]))
            if live.row.scores or live.row.prefix_tokens > 0:
                live.logps.append(self._pending_logp[i])
            if pending[i] == self.eos_id or len(live.out) >= live.budget:
                finished.append(live.finish(stopped=False))
                live.dead_since = self.steps
        # A finished row's tensors stay a few steps: on a CPU a step of 16 rows costs about what
        # 12 do (the weights dominate), while dropping a row copies every cache.
        dead = [r.dead_since for r in self._rows if r.dead_since >= 0]
        if (
            not len(self)
            or 2 * len(dead) > len(self._rows)
            or min(dead, default=self.steps) <= self.steps - 8
        ):
            self._compact()
        if self._rows:
            with reuse_weights(self._weights):
                self._advance()
        self._note_cache_bytes()
        if not self._rows:
            self._release()
        return finished

    def _compact(self) -> None:
        """Drop the finished rows' tensors, then the leading columns no remaining row needs."""
        keep = [i for i, r in enumerate(self._rows) if r.dead_since < 0]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self._valid.device)
        self._valid = self._valid.index_select(0, index)
        lead = int(self._valid.shape[1] - self._valid.sum(1).max())
        cols = slice(lead, None)
        self._caches = [
            (k.index_select(0, index)[:, :, cols], v.index_select(0, index)[:, :, cols])
            for k, v in self._caches
        ]
        self._valid = self._valid[:, cols]
        self._image_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self._image_kv]
        self._pending = self._pending.index_select(0, index)
        self._pending_logp = self._pending_logp.index_select(0, index)

    def _advance(self) -> None:
        """Feed every row its pending token (at its own next position); choose the next ones."""
        device = self._valid.device
        b = len(self._rows)
        pos = torch.tensor([len(r.row.prompt) + len(r.out) - 1 for r in self._rows], device=device)
        self._valid = torch.cat([self._valid, torch.ones(b, 1, dtype=torch.bool, device=device)], dim=1)
        step_mask = self._valid[:, None, None, :]
        x = self.decoder.tok(self._pending)[:, None] + self.decoder.pos(pos)[:, None]
        for li, (blk, kv) in enumerate(zip(self.decoder.layers(), self._image_kv, strict=True)):
            x, self._caches[li] = blk(x, step_mask, kv, self_cache=self._caches[li])
        self._pending, self._pending_logp = self._choose(self.decoder.logits(x[:, -1]), self._rows)

    def _note_cache_bytes(self) -> None:
        held = sum(t.numel() * t.element_size() for c in (*self._caches, *self._image_kv) for t in c)
        self.decoder.peak_cache_bytes = max(self.decoder.peak_cache_bytes, held)

    def _release(self) -> None:
        """The batch is empty: drop its tensors and the dequantized weights it kept."""
        self._caches, self._image_kv = [], []
        self._valid = torch.zeros(0, 0, dtype=torch.bool)
        self._pending = torch.zeros(0, dtype=torch.long)
        self._pending_logp = torch.zeros(0)
        self._weights = None

    def clear(self) -> list[object]:
        """Drop every row (a failed step leaves the batch in no usable state); their tags."""
        tags = self.tags
        self._rows = []
        self._release()
        return tags
