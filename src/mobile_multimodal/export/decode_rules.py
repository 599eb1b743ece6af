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
    nxt = rule.pick(logits[0], answer_so_far)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class DecodeRule:
    def __init__(self, task: str | None, constraint: dict[str, Any] | None, eos_id: int) -> None:
        self.task = task if constraint else None
        self.eos = eos_id
        spec = constraint or {}
        self.start = int(spec.get("start", 0))
        self.accepting = {int(s) for s in spec.get("accepting", [])}
        self.edges = [{int(t): int(n) for t, n in state} for state in spec.get("edges", [])]

    def allowed(self, emitted: Sequence[int]) -> list[int] | None:
        """Sorted ids allowed after ``emitted``; None when the task is unconstrained."""
        if self.task is None:
            return None
        state = self.start
        for token in emitted:
            nxt = self.edges[state].get(token)
            if nxt is None:
                return [self.eos]
            state = nxt
        out = set(self.edges[state])
        if state in self.accepting or not out:
            out.add(self.eos)
        return sorted(out)

    def pick(self, logits: np.ndarray, emitted: Sequence[int]) -> int:
        """The greedy token: argmax of ``logits`` (V,) over the allowed ids (first on ties)."""
        allowed = self.allowed(emitted)
        if allowed is None:
            return int(np.argmax(logits))
        return allowed[int(np.argmax(logits[allowed]))]


def rule_for_prompt(spec: dict[str, Any], prompt: Sequence[int], eos_id: int) -> DecodeRule:
    """The rule of the task whose prompt ``prompt`` is (recognised by its task token, the prompt's
    second id), so every caller of the decode loop gets the task's constraint."""
    for task, entry in spec["tasks"].items():
        task_prompt = entry.get("prompt")
        if task_prompt and len(prompt) > 1 and int(task_prompt[1]) == int(prompt[1]):
            return DecodeRule(task, entry.get("constraint"), eos_id)
    return DecodeRule(None, None, eos_id)
