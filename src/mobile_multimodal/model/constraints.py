"""Task-constrained greedy decoding: a caption stays a caption, an answer is one of the answers.

Each decoded task has an automaton over token ids, read off the training corpus
(``data/task_language.py``): at every step a row may only emit the tokens on the edges out of
the state its tokens so far have reached, and ``<eos>`` only in an accepting state.

- captioning: every caption the generator can write (its templates, each object in its own
  cell in reading order, as many objects as the count word says; size, colour and shape free).
  So a caption never holds "yes" or "what", never names a cell twice and never rambles on.
- vqa: exactly the 61 training answers.

The greedy token is the argmax over the allowed tokens only. Exported bundles carry the same
automata as data (``to_json``) and ``export/decode_rules.py`` walks them from there, so runtimes
decode what PyTorch decodes.

For the decoder, every task's automaton is also one joint table (:class:`ConstraintTable`): an
additive mask row (0 allowed, -inf not) and a next-state row per state, so a decode step costs one
gather and one index per batch, whatever the tasks of its rows, instead of walking each row's
tokens from the start and building a mask in Python (that cost 10-20 % of a batch-1 caption).
Two extra states: ``off`` (only ``<eos>``: where a token off the language leads, as ``allowed``
says) and ``free`` (everything, forever: a row decoded without constraint).

Example::

    rules = TaskConstraints.from_tokenizer(Tokenizer.default())
    rules.allowed("vqa", [])                    # ids of every answer's first word
    rules.allowed("captioning", ids_so_far)     # sorted ids allowed next
    rows = rules.rows(["captioning", "vqa"])    # per-row states for TextDecoder.generate
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import torch
from torch import Tensor

from mobile_multimodal.data.task_language import Automaton, answer_automaton, caption_automaton
from mobile_multimodal.model.tokenizer import Tokenizer

CONSTRAINED_TASKS = ("captioning", "vqa")


@dataclass(frozen=True)
class TokenAutomaton:
    edges: tuple[dict[int, int], ...]  # edges[state][token] = next state; the start is state 0
    accepting: frozenset[int]

    def allowed(self, emitted: list[int], eos_id: int) -> list[int]:
        state = 0
        for token in emitted:
            nxt = self.edges[state].get(token)
            if nxt is None:  # off the language (only possible for tokens not decoded through it)
                return [eos_id]
            state = nxt
        out = set(self.edges[state])
        if state in self.accepting or not out:
            out.add(eos_id)
        return sorted(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": 0,
            "accepting": sorted(self.accepting),
            "edges": [sorted([token, nxt] for token, nxt in e.items()) for e in self.edges],
        }


@dataclass(frozen=True)
class TaskConstraints:
    eos_id: int
    automata: dict[str, TokenAutomaton]
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TaskConstraints:
        return _build(tuple(tokenizer.itos))

    def allowed(self, task: str, emitted: list[int]) -> list[int]:
        """Sorted token ids ``task`` may emit after ``emitted`` (never empty)."""
        if task not in self.automata:
            raise ValueError(f"no decoding constraint for task {task!r}; choose from {CONSTRAINED_TASKS}")
        return self.automata[task].allowed(emitted, self.eos_id)

    def to_json(self) -> dict[str, Any]:
        """The automata as data, for bundle.json (``export/decode_rules.py`` walks them)."""
        return {task: a.to_json() for task, a in self.automata.items()}

    @cached_property
    def table(self) -> ConstraintTable:
        return ConstraintTable.build(self)

    def rule(self, task: str) -> TaskRule:
        """``task``'s automaton in the joint table, for a decode that keeps one state per row."""
        if task not in self.automata:
            raise ValueError(f"no decoding constraint for task {task!r}; choose from {CONSTRAINED_TASKS}")
        return TaskRule(self.table, self.table.start[task])

    def rows(self, tasks: Sequence[str | None]) -> RowConstraints:
        """The constraint of a batch whose row ``i`` decodes ``tasks[i]`` (None: freely)."""
        table = self.table
        return RowConstraints(table, [table.free if t is None else table.start[t] for t in tasks])


@dataclass(frozen=True)
class ConstraintTable:
    """Every task's automaton as tensors over one state space (see the module doc).

    ``bias[s]`` (V,) is 0 for the tokens state ``s`` allows and -inf elsewhere; ``next[s, t]`` is
    the state after emitting ``t`` in ``s`` (``off`` for a token with no edge)."""

    bias: Tensor  # (states, V) float32
    next: Tensor  # (states, V) int64
    start: dict[str, int]
    off: int
    free: int

    @classmethod
    def build(cls, rules: TaskConstraints) -> ConstraintTable:
        vocab = rules.vocab_size
        n_states = sum(len(a.edges) for a in rules.automata.values()) + 2
        off, free = n_states - 2, n_states - 1
        bias = torch.full((n_states, vocab), float("-inf"))
        nxt = torch.full((n_states, vocab), off, dtype=torch.long)
        start: dict[str, int] = {}
        base = 0
        for task, automaton in rules.automata.items():
            start[task] = base
            for s, edges in enumerate(automaton.edges):
                for token, to in edges.items():
                    bias[base + s, token] = 0.0
                    nxt[base + s, token] = base + to
                if s in automaton.accepting or not edges:
                    bias[base + s, rules.eos_id] = 0.0
            base += len(automaton.edges)
        bias[off, rules.eos_id] = 0.0
        bias[free] = 0.0
        nxt[free] = free
        return cls(bias, nxt, start, off, free)

    def allowed(self, state: int) -> list[int]:
        return [int(t) for t in torch.nonzero(self.bias[state] == 0.0).flatten()]

    def state_after(self, start: int, emitted: Sequence[int]) -> int:
        state = start
        for token in emitted:
            state = int(self.next[state, token])
        return state


@dataclass(frozen=True)
class TaskRule:
    """One task's constraint for a row that keeps its own state (``decode_batch.DecodeBatch``):
    ``mask(state)`` is the additive mask row of the tokens allowed there, ``after(state, token)``
    the state that emitting ``token`` leads to; a row starts in ``start``."""

    table: ConstraintTable
    start: int

    def mask(self, state: int) -> Tensor:
        return self.table.bias[state]

    def after(self, state: int, token: int) -> int:
        return int(self.table.next[state, token])


@dataclass(frozen=True)
class RowConstraints:
    """The constraint of each row of one decode batch: its start state in a joint table.

    Callable as ``allowed(row, emitted)`` (the decoder's generic form, e.g. for its uncached
    reference path); the cached path steps ``states`` itself with :meth:`pick`."""

    table: ConstraintTable
    starts: list[int]

    def __call__(self, row: int, emitted: list[int]) -> list[int]:
        return self.table.allowed(self.table.state_after(self.starts[row], emitted))

    def initial(self, device: torch.device) -> Tensor:
        return torch.tensor(self.starts, dtype=torch.long, device=device)

    def pick(self, logits: Tensor, states: Tensor) -> tuple[Tensor, Tensor]:
        """Greedy tokens (B,) over each row's allowed ids (the first maximum on ties, as
        ``argmax`` does) and the rows' next states; ``logits`` (B, V) over the tokenizer's ids."""
        bias, nxt = self.table.bias, self.table.next
        if bias.device != logits.device:
            bias, nxt = bias.to(logits.device), nxt.to(logits.device)
        if logits.shape[-1] != bias.shape[1]:
            raise ValueError(f"logits over {logits.shape[-1]} ids, the constraint over {bias.shape[1]}")
        tokens = (logits + bias[states].to(logits.dtype)).argmax(-1)
        return tokens, nxt[states, tokens]


def _to_ids(automaton: Automaton, stoi: dict[str, int]) -> TokenAutomaton:
    edges, accepting = automaton
    missing = sorted({w for e in edges for w in e} - set(stoi))
    if missing:
        raise ValueError(f"the tokenizer lacks words of the task language: {missing}")
    return TokenAutomaton(tuple({stoi[w]: s for w, s in e.items()} for e in edges), accepting)


@lru_cache(maxsize=8)
def _build(itos: tuple[str, ...]) -> TaskConstraints:
    stoi = {w: i for i, w in enumerate(itos)}
    return TaskConstraints(
        eos_id=stoi["<eos>"],
        vocab_size=len(itos),
        automata={
            "captioning": _to_ids(caption_automaton(), stoi),
            "vqa": _to_ids(answer_automaton(), stoi),
        },
    )
