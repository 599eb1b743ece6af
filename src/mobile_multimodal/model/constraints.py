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

Example::

    rules = TaskConstraints.from_tokenizer(Tokenizer.default())
    rules.allowed("vqa", [])                    # ids of every answer's first word
    rules.allowed("captioning", ids_so_far)     # sorted ids allowed next
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

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
        automata={
            "captioning": _to_ids(caption_automaton(), stoi),
            "vqa": _to_ids(answer_automaton(), stoi),
        },
    )
