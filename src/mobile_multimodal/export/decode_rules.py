"""The decoding constraint of an exported bundle, applied from ``bundle.json`` alone.

``bundle.json`` carries each decoded task's rule as data (``tasks.<task>.constraint``, written
from ``model/constraints.py``); this module applies it the way a phone app would, importing
nothing of the model package, so export validation proves the description is enough:

- captioning: only ``allowed_tokens``; a run of ``position_tokens`` must be a prefix of one of
  ``positions`` not used earlier in the caption, and may end only as a whole unused position.
- vqa: the answer so far must be a prefix of one of ``answers``; ``<eos>`` once it is a whole one.

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
        self.tokens = {int(t) for t in spec.get("allowed_tokens", [])}
        self.position_tokens = {int(t) for t in spec.get("position_tokens", [])}
        self.positions = [tuple(int(t) for t in p) for p in spec.get("positions", [])]
        self.answers = [tuple(int(t) for t in a) for a in spec.get("answers", [])]

    def allowed(self, emitted: Sequence[int]) -> list[int] | None:
        """Sorted ids allowed after ``emitted``; None when the task is unconstrained."""
        if self.task == "vqa":
            prefix, n = tuple(emitted), len(emitted)
            nxt = {a[n] for a in self.answers if len(a) > n and a[:n] == prefix}
            if prefix in self.answers or not nxt:
                nxt.add(self.eos)
            return sorted(nxt)
        if self.task == "captioning":
            used: set[tuple[int, ...]] = set()
            run: list[int] = []
            for t in emitted:
                if t in self.position_tokens:
                    run.append(t)
                elif run:
                    used.add(tuple(run))
                    run = []
            cur, k = tuple(run), len(run)
            out = {p[k] for p in self.positions if p not in used and len(p) > k and p[:k] == cur}
            if not cur or (cur in self.positions and cur not in used):
                out |= (self.tokens - self.position_tokens) | {self.eos}
            return sorted(out) if out else [self.eos]
        return None

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
