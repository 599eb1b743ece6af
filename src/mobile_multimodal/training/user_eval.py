"""Scores on the user-style split (``data/user_style.py``), the tasks ``mobile-mm eval`` reports
beside the generator's held-out splits.

- ``user_captioning``: ``attribute_recall`` (primary): the fraction of drawn objects whose colour
  and shape the caption names (a multiset match: two red circles need two mentions);
  ``attribute_precision``: the fraction of named (colour, shape) pairs that are in the image;
  ``invented_repeat_rate``: captions naming one (colour, shape) more often than the image has it;
  ``attribute_recall_<background>`` per background kind (light, dark, gradient, textured), and
  ``attribute_recall_<size>`` per object size relative to the image (``recall_by_size``), and
  ``missed_named_when_magnified``: of the objects the captions missed, the share named when the
  object's region alone is captioned (``magnified_misses``): near 1, the misses are objects too
  small in the scene input rather than objects the model does not know (reading the scene at 256
  px instead of 128 did not name more of them: the README's "Scenes at 256 px").
- ``user_vqa``: ``accuracy`` (primary), and per question kind (``accuracy_color`` ...).
- ``user_ocr``: lowercase held-out words, ``word_accuracy`` (primary) and ``cer``; both OCR
  tasks also per line length and polarity (``ocr_breakdown``).
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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mobile_multimodal.data.user_style import USER_SIZES, USER_TASKS, UserExample, UserObject, load_user_split
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


# Where a model fails on users' images, by what the image gives it to work with: an object's
# size as a fraction of the image's long side (at a 64-px scene input, 0.1 is ~6 px), a text
# line's length (a long line is scaled down to fit the reader) and its polarity.
SIZE_BUCKETS = ((0.0, 0.1, "lt10pct"), (0.1, 0.2, "10to20pct"), (0.2, float("inf"), "ge20pct"))
LENGTH_BUCKETS = ((0, 8, "len_le8"), (9, 16, "len_9to16"), (17, 10**9, "len_ge17"))


def _size_bucket(extent: float, image_size: tuple[int, int]) -> str:
    share = extent / max(image_size)
    return next(name for low, high, name in SIZE_BUCKETS if low <= share < high)


def object_matches(
    predictions: list[str], examples: list[UserExample]
) -> Iterator[tuple[UserExample, UserObject, bool]]:
    """Each drawn object with whether its caption names it: its (colour, shape) pair among the
    caption's, each mention counted once, the larger of two identical objects first."""
    for caption, ex in zip(predictions, examples, strict=True):
        left = Counter(caption_pairs(caption))
        for o in sorted(ex.objects, key=lambda o: -o.extent):
            named = left[(o.color, o.shape)] > 0
            left[(o.color, o.shape)] -= named
            yield ex, o, named


def recall_by_size(predictions: list[str], examples: list[UserExample]) -> dict[str, float]:
    """``attribute_recall`` per object size (``SIZE_BUCKETS``), with each bucket's object count:
    an object counts as named when the caption names its (colour, shape) pair, the larger of
    two identical objects first."""
    hits: Counter[str] = Counter()
    objects: Counter[str] = Counter()
    for ex, o, named in object_matches(predictions, examples):
        bucket = _size_bucket(o.extent, ex.image.size)
        objects[bucket] += 1
        hits[bucket] += named
    out: dict[str, float] = {}
    for _, _, name in SIZE_BUCKETS:
        if objects[name]:
            out[f"attribute_recall_{name}"] = hits[name] / objects[name]
            out[f"objects_{name}"] = objects[name]
    return out


# a missed object's region: a square this many times its extent, centred on it (inside the image)
MAGNIFY = 3.0


def region_of(ex: UserExample, o: UserObject) -> tuple[int, int, int, int]:
    """The crop box (left, top, right, bottom) of ``o``'s region: ``MAGNIFY`` times its extent,
    centred on it, moved (and cut only when the image is smaller) to lie inside the image."""
    width, height = ex.image.size
    side = min(max(MAGNIFY * o.extent, 16.0), width, height)
    left = min(max(o.center[0] - side / 2, 0.0), width - side)
    top = min(max(o.center[1] - side / 2, 0.0), height - side)
    return round(left), round(top), round(left + side), round(top + side)


def magnified_misses(
    model: Any, predictions: list[str], examples: list[UserExample], run: Batched
) -> dict[str, float]:
    """Of the objects the captions missed, how many the model names when their region alone
    (``region_of``) is captioned: ``missed_objects`` and ``missed_named_when_magnified``."""
    missed = [(ex, o) for ex, o, named in object_matches(predictions, examples) if not named]
    if not missed:
        return {"missed_objects": 0}
    crops = [ex.image.crop(region_of(ex, o)) for ex, o in missed]
    captions = run(crops, model.generate_captions, "user_captioning magnified misses")
    named = sum((o.color, o.shape) in caption_pairs(c) for (_, o), c in zip(missed, captions, strict=True))
    return {"missed_objects": len(missed), "missed_named_when_magnified": named / len(missed)}


def ocr_breakdown(predictions: list[str], examples: list[UserExample]) -> dict[str, float]:
    """``word_accuracy`` per line length (``LENGTH_BUCKETS``, characters) and per polarity
    (``light_on_dark`` / ``dark_on_light``), with each part's line count."""
    parts: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        length = next(name for low, high, name in LENGTH_BUCKETS if low <= len(ex.text) <= high)
        polarity = "light_on_dark" if ex.meta.get("light_on_dark") else "dark_on_light"
        for name in (length, polarity):
            parts.setdefault(name, []).append(i)
    out: dict[str, float] = {}
    for name in [n for _, _, n in LENGTH_BUCKETS] + ["light_on_dark", "dark_on_light"]:
        if name in parts:
            idx = parts[name]
            out[f"word_accuracy_{name}"] = word_accuracy(
                [predictions[i] for i in idx], [examples[i].text for i in idx]
            )
            out[f"lines_{name}"] = len(idx)
    return out


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
        scores.update(recall_by_size(preds, ex))
        scores.update(magnified_misses(model, preds, ex, run))
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
                **ocr_breakdown(preds, ex),
                "n": len(ex),
            }
            if task == "user_ocr_mixed":
                charset = str(getattr(model.tokenizer, "charset", OCR_CHARSET))
                res[task]["charset_word_accuracy"] = word_accuracy(
                    preds, [fold_to_charset(t, charset) for t in targets]
                )
    return res


__all__ = [
    "USER_TASKS",
    "attribute_scores",
    "caption_pairs",
    "evaluate_user_tasks",
    "fold_to_charset",
    "ocr_breakdown",
    "recall_by_size",
]
