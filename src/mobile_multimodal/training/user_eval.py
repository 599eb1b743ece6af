"""Scores on the user-style split (``data/user_style.py``), the tasks ``mobile-mm eval`` reports
beside the generator's held-out splits.

- ``user_captioning``: ``attribute_recall`` (primary): the fraction of drawn objects whose colour
  and shape the caption names (a multiset match: two red circles need two mentions);
  ``attribute_precision``: the fraction of named (colour, shape) pairs that are in the image;
  ``invented_repeat_rate``: captions naming one (colour, shape) more often than the image has it;
  ``attribute_recall_<background>`` per background kind (light, dark, gradient, textured).
- ``user_vqa``: ``accuracy`` (primary), and per question kind (``accuracy_color`` ...).
- ``user_ocr``: lowercase held-out words, ``word_accuracy`` (primary) and ``cer``.
- ``user_ocr_mixed``: mixed case, digits and punctuation, exact ``word_accuracy`` (primary) and
  ``cer``; ``charset_word_accuracy`` scores against the target folded into the model's OCR
  character set (other characters dropped, lower-cased for a charset without capitals): what the
  reader gets right of what its charset can express.

Example::

    scores = evaluate_user_tasks(model, ("user_vqa",), limit=50)
    scores["user_vqa"]["primary"]      # accuracy over 50 questions
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from mobile_multimodal.data.user_style import USER_SIZES, USER_TASKS, UserExample, load_user_split
from mobile_multimodal.data.vocabulary import COLORS, OCR_CHARSET, SHAPES
from mobile_multimodal.training.eval_metrics import char_error_rate, exact_match_accuracy, word_accuracy

Batched = Callable[[Sequence[Any], Callable[[Any], list[Any]], str], list[Any]]


def caption_pairs(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs a caption names: a colour word directly followed by a shape word."""
    words = caption.replace(",", " ").replace(":", " ").split()
    return [(a, b) for a, b in itertools.pairwise(words) if a in COLORS and b in SHAPES]


def attribute_scores(predictions: list[str], examples: list[UserExample]) -> dict[str, float]:
    hit = named = present = repeats = 0
    for caption, ex in zip(predictions, examples, strict=True):
        pred = Counter(caption_pairs(caption))
        gold = Counter((o.color, o.shape) for o in ex.objects)
        hit += sum((pred & gold).values())
        named += sum(pred.values())
        present += sum(gold.values())
        repeats += any(n > 1 and n > gold[pair] for pair, n in pred.items())
    return {
        "attribute_recall": hit / max(1, present),
        "attribute_precision": hit / max(1, named),
        "invented_repeat_rate": repeats / max(1, len(examples)),
    }


def fold_to_charset(text: str, charset: str = OCR_CHARSET) -> str:
    """``text`` as a reader with ``charset`` could at best write it (lower-cased only for a
    charset without capital letters: a printable-ASCII reader must get the case right)."""
    folds_case = not any(c.isupper() for c in charset)
    kept = "".join(c for c in (text.lower() if folds_case else text) if c in charset)
    return " ".join(kept.split())


def _count(task: str, limit: int | None) -> int:
    return USER_SIZES[task] if limit is None else min(limit, USER_SIZES[task])


def evaluate_user_tasks(
    model: Any, tasks: Sequence[str], limit: int | None, batched: Batched | None = None
) -> dict[str, dict[str, Any]]:
    """The report entries of the user-style ``tasks`` (those of :data:`USER_TASKS` asked for).
    ``model`` is a MobileMultiModalLLM or an export's BundleModel; ``batched(items, fn, desc)``
    runs ``fn`` over batches (default: one call)."""
    run: Batched = batched or (lambda items, fn, desc: fn(items))
    res: dict[str, dict[str, Any]] = {}
    if "user_captioning" in tasks:
        ex = load_user_split("user_captioning", _count("user_captioning", limit))
        preds = run([e.image for e in ex], model.generate_captions, "user_captioning")
        scores = attribute_scores(preds, ex)
        for kind in sorted({str(e.meta["background"]) for e in ex}):
            idx = [i for i, e in enumerate(ex) if e.meta["background"] == kind]
            part = attribute_scores([preds[i] for i in idx], [ex[i] for i in idx])
            scores[f"attribute_recall_{kind}"] = part["attribute_recall"]
        res["user_captioning"] = {
            "primary": scores["attribute_recall"],
            **scores,
            "n": len(ex),
            "examples": [
                {"prediction": p, "objects": [f"{o.color} {o.shape}" for o in e.objects]}
                for p, e in zip(preds[:3], ex[:3], strict=True)
            ],
        }
    if "user_vqa" in tasks:
        ex = load_user_split("user_vqa", _count("user_vqa", limit))
        preds = run(
            ex, lambda b: model.answer_questions([e.image for e in b], [e.question for e in b]), "user_vqa"
        )
        acc = exact_match_accuracy(preds, [e.answer for e in ex])
        entry: dict[str, Any] = {"primary": acc, "accuracy": acc, "n": len(ex)}
        for kind in sorted({e.kind for e in ex}):
            idx = [i for i, e in enumerate(ex) if e.kind == kind]
            entry[f"accuracy_{kind}"] = exact_match_accuracy(
                [preds[i] for i in idx], [ex[i].answer for i in idx]
            )
        res["user_vqa"] = entry
    for task in ("user_ocr", "user_ocr_mixed"):
        if task in tasks:
            ex = load_user_split(task, _count(task, limit))
            preds = run([e.image for e in ex], model.extract_texts, task)
            targets = [e.text for e in ex]
            acc = word_accuracy(preds, targets)
            res[task] = {
                "primary": acc,
                "word_accuracy": acc,
                "cer": char_error_rate(preds, targets),
                "n": len(ex),
            }
            if task == "user_ocr_mixed":
                charset = str(getattr(model.tokenizer, "charset", OCR_CHARSET))
                res[task]["charset_word_accuracy"] = word_accuracy(
                    preds, [fold_to_charset(t, charset) for t in targets]
                )
    return res


__all__ = ["USER_TASKS", "attribute_scores", "caption_pairs", "evaluate_user_tasks", "fold_to_charset"]
