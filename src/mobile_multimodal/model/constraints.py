"""Task-constrained greedy decoding: a caption stays a caption, an answer is one of the answers.

At every decode step a row may only emit the tokens its task allows after what it has emitted:

- captioning: the caption vocabulary (``data/task_language.caption_words``) and ``<eos>``; a run
  of position words must be a position phrase ("top left", "center" ...) not used earlier in the
  caption (training captions put each object in its own cell, so a repeated position is always
  an invented object).
- vqa: a prefix of one of the training answers (``data/task_language.vqa_answers``), ``<eos>``
  once a whole answer is out.

The greedy token is the argmax over the allowed tokens only. Exported bundles carry the same
rule as data (``to_json``) and ``export/decode.py`` applies it from there, so runtimes decode
what PyTorch decodes.

Example::

    rules = TaskConstraints.from_tokenizer(Tokenizer.default())
    rules.allowed("vqa", [])                    # ids of every answer's first word
    rules.allowed("captioning", ids_so_far)     # sorted ids allowed next
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mobile_multimodal.data.task_language import caption_words, position_phrases, vqa_answers
from mobile_multimodal.model.tokenizer import Tokenizer

CONSTRAINED_TASKS = ("captioning", "vqa")


@dataclass(frozen=True)
class TaskConstraints:
    eos_id: int
    caption_tokens: frozenset[int]
    position_tokens: frozenset[int]
    positions: tuple[tuple[int, ...], ...]
    answers: tuple[tuple[int, ...], ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TaskConstraints:
        return _build(tuple(tokenizer.itos))

    def allowed(self, task: str, emitted: list[int]) -> list[int]:
        """Sorted token ids ``task`` may emit after ``emitted`` (never empty)."""
        if task == "vqa":
            return self._answer_next(tuple(emitted))
        if task == "captioning":
            return self._caption_next(emitted)
        raise ValueError(f"no decoding constraint for task {task!r}; choose from {CONSTRAINED_TASKS}")

    def _answer_next(self, prefix: tuple[int, ...]) -> list[int]:
        n = len(prefix)
        nxt = {a[n] for a in self.answers if len(a) > n and a[:n] == prefix}
        if prefix in self.answers or not nxt:  # a whole answer, or (never from this rule) a dead end
            nxt.add(self.eos_id)
        return sorted(nxt)

    def _caption_next(self, emitted: list[int]) -> list[int]:
        used: set[tuple[int, ...]] = set()
        run: list[int] = []
        for t in emitted:
            if t in self.position_tokens:
                run.append(t)
            elif run:
                used.add(tuple(run))
                run = []
        current = tuple(run)
        k = len(current)
        free = [p for p in self.positions if p not in used]
        extend = {p[k] for p in free if len(p) > k and p[:k] == current}
        can_close = not current or (current in self.positions and current not in used)
        others = (self.caption_tokens - self.position_tokens) | {self.eos_id}
        out = extend | (others if can_close else set())
        return sorted(out) if out else [self.eos_id]

    def to_json(self) -> dict[str, Any]:
        """The rules as data, for bundle.json (``export/decode.py`` applies them)."""
        return {
            "captioning": {
                "allowed_tokens": sorted([*self.caption_tokens, self.eos_id]),
                "position_tokens": sorted(self.position_tokens),
                "positions": [list(p) for p in self.positions],
            },
            "vqa": {"answers": [list(a) for a in self.answers]},
        }


@lru_cache(maxsize=8)
def _build(itos: tuple[str, ...]) -> TaskConstraints:
    stoi = {w: i for i, w in enumerate(itos)}
    missing = sorted({*caption_words(), *(w for a in vqa_answers() for w in a)} - set(stoi))
    if missing:
        raise ValueError(f"the tokenizer lacks words of the task language: {missing}")
    positions = tuple(tuple(stoi[w] for w in p) for p in position_phrases())
    return TaskConstraints(
        eos_id=stoi["<eos>"],
        caption_tokens=frozenset(stoi[w] for w in caption_words()),
        position_tokens=frozenset(t for p in positions for t in p),
        positions=positions,
        answers=tuple(sorted(tuple(stoi[w] for w in a) for a in vqa_answers())),
    )
