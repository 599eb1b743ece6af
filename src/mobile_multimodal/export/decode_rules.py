"""The decoding constraint of an exported bundle, applied from ``bundle.json`` alone.

``bundle.json`` carries each decoded task's automaton as data (``tasks.<task>.constraint``:
``start``, ``accepting`` states and each state's ``edges`` as [token id, next state] pairs,
written from ``model/constraints.py``); this module walks it the way a phone app would, importing
nothing of the model package, so export validation proves the description is enough: after the
answer so far, the allowed ids are those on the edges out of the state it reached, plus
``<eos>`` in an accepting state (or where no edge leaves).

The greedy token is the first maximum of the logits over the allowed ids. A bundle without
``constraint`` (written before it existed) decodes freely.

Example::

    rule = rule_for_prompt(bundle.description, prompt, eos_id)
    nxt = rule.pick(logits[0], answer_so_far)     # walks the answer from the start state
    state = rule.next_state(rule.start, nxt)      # or keep the state as the answer grows
    nxt = rule.pick_in(logits[0], state)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OFF_LANGUAGE = -1  # the state after a token no edge allows: only <eos> may follow


class DecodeRule:
    def __init__(self, task: str | None, constraint: dict[str, Any] | None, eos_id: int) -> None:
        self.task = task if constraint else None
        self.eos = eos_id
        spec = constraint or {}
        self.start = int(spec.get("start", 0))
        self.accepting = {int(s) for s in spec.get("accepting", [])}
        self.edges = [{int(t): int(n) for t, n in state} for state in spec.get("edges", [])]
        # each state's allowed ids, sorted, computed once: the decode loop asks at every token
        self.allowed_ids = [self._out_of(state) for state in range(len(self.edges))]
        self.off_language_ids = np.array([eos_id], dtype=np.int64)
        self._masks: dict[tuple[int, int], np.ndarray] = {}  # (state, vocab) -> allowed_mask

    def _out_of(self, state: int) -> np.ndarray:
        out = set(self.edges[state])
        if state in self.accepting or not out:
            out.add(self.eos)
        return np.array(sorted(out), dtype=np.int64)

    def next_state(self, state: int, token: int) -> int:
        """The state after ``token`` in ``state`` (``OFF_LANGUAGE`` once a token leaves the
        language; unconstrained: always the start)."""
        if self.task is None or state == OFF_LANGUAGE:
            return state
        return self.edges[state].get(token, OFF_LANGUAGE)

    def state_after(self, emitted: Sequence[int]) -> int:
        state = self.start
        for token in emitted:
            state = self.next_state(state, token)
        return state

    def allowed_in(self, state: int) -> np.ndarray | None:
        """Sorted ids allowed in ``state``; None when the task is unconstrained."""
        if self.task is None:
            return None
        return self.off_language_ids if state == OFF_LANGUAGE else self.allowed_ids[state]

    def allowed(self, emitted: Sequence[int]) -> list[int] | None:
        """Sorted ids allowed after ``emitted``; None when the task is unconstrained."""
        ids = self.allowed_in(self.state_after(emitted))
        return None if ids is None else [int(i) for i in ids]

    def pick_in(self, logits: np.ndarray, state: int) -> int:
        """The greedy token in ``state``: argmax of ``logits`` (V,) over the allowed ids (first
        on ties). A loop keeps the state: ``state = rule.next_state(state, token)``."""
        allowed = self.allowed_in(state)
        if allowed is None:
            return int(np.argmax(logits))
        return int(allowed[int(np.argmax(logits[allowed]))])

    def allowed_mask(self, state: int, vocab: int) -> np.ndarray:
        """(vocab,) bool, True at the ids allowed in ``state`` (everywhere when unconstrained),
        built once per state: ``pick_rows`` picks a batch's tokens in one pass with it."""
        mask = self._masks.get((state, vocab))
        if mask is None:
            allowed = self.allowed_in(state)
            mask = np.ones(vocab, dtype=bool)
            if allowed is not None:
                mask[:] = False
                mask[allowed] = True
            self._masks[(state, vocab)] = mask  # a lost race builds the same mask
        return mask

    def pick(self, logits: np.ndarray, emitted: Sequence[int]) -> int:
        """The greedy token after ``emitted`` (``pick_in`` from the state it reaches)."""
        return self.pick_in(logits, self.state_after(emitted))


def pick_rows(logits: np.ndarray, rules: Sequence[DecodeRule], states: Sequence[int]) -> np.ndarray:
    """Each row's ``pick_in`` at once: the greedy ids (R,) of ``logits`` (R, V), row r over what
    ``rules[r]`` allows in ``states[r]`` (the first maximum on ties, as ``pick_in``: argmax
    returns the lowest allowed id among equal scores either way)."""
    vocab = logits.shape[1]
    allowed = np.stack([rule.allowed_mask(state, vocab) for rule, state in zip(rules, states, strict=True)])
    return np.asarray(np.argmax(np.where(allowed, logits, -np.inf), axis=1))


def task_of_prompt(spec: dict[str, Any], prompt: Sequence[int]) -> str | None:
    """The task whose prompt ``prompt`` is (recognised by its task token, the prompt's second id)."""
    for task, entry in spec["tasks"].items():
        task_prompt = entry.get("prompt")
        if task_prompt and len(prompt) > 1 and int(task_prompt[1]) == int(prompt[1]):
            return str(task)
    return None


def rule_for_prompt(spec: dict[str, Any], prompt: Sequence[int], eos_id: int) -> DecodeRule:
    """The rule of the task whose prompt ``prompt`` is, so every caller of the decode loop gets
    the task's constraint (built anew: a loop that decodes many answers keeps a ``TaskRules``)."""
    task = task_of_prompt(spec, prompt)
    if task is None:
        return DecodeRule(None, None, eos_id)
    return DecodeRule(task, spec["tasks"][task].get("constraint"), eos_id)


class TaskRules:
    """``rule_for_prompt`` with each task's rule built once: the caption constraint has hundreds
    of states, and building it took longer than a decode step. Rules never change once built,
    so threads may share them."""

    def __init__(self, spec: dict[str, Any], eos_id: int) -> None:
        self.spec = spec
        self.eos = eos_id
        self.free = DecodeRule(None, None, eos_id)
        self.rules: dict[str, DecodeRule] = {}

    def for_prompt(self, prompt: Sequence[int]) -> DecodeRule:
        task = task_of_prompt(self.spec, prompt)
        if task is None:
            return self.free
        if task not in self.rules:  # two threads may both build it: the same rule either way
            self.rules[task] = rule_for_prompt(self.spec, prompt, self.eos)
        return self.rules[task]
