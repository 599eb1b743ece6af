"""`mobile-mm eval`: score a model on the held-out splits and produce the DESIGN.md report.

{"model", "quantization", "size_bytes", "tasks": {TASK: {"primary": float, "n": int, ...}}}

TASKS are the generator's held-out splits (what quantization and export validation score);
USER_STYLE_TASKS the user-style split drawn by other code (``training/user_eval.py``), which
``mobile-mm eval`` reports beside them (EVAL_TASKS).

Example::

    report = evaluate_model("default", "int2", limit=50, tasks=EVAL_TASKS)
    report["tasks"]["user_ocr_mixed"]["primary"]
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from mobile_multimodal.data.scenes import parse_caption_objects
from mobile_multimodal.data.splits import DEFAULT_SIZES, load_eval_split
from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.training.eval_metrics import (
    bleu4,
    char_error_rate,
    cider_d,
    exact_match_accuracy,
    recall_at_k,
    word_accuracy,
)
from mobile_multimodal.training.ocr_lm import OCR_DECODINGS, build_ocr_reader, describe_reader
from mobile_multimodal.training.user_eval import USER_TASKS, evaluate_user_tasks

TASKS = ("captioning", "ocr", "ocr_unseen_fonts", "vqa", "easy_vqa", "retrieval")
USER_STYLE_TASKS = USER_TASKS
EVAL_TASKS = TASKS + USER_STYLE_TASKS
BATCH = 64
T = TypeVar("T")
R = TypeVar("R")


def _batched(items: Sequence[T], fn: Callable[[Any], list[R]], desc: str) -> list[R]:
    out: list[R] = []
    for i in tqdm(range(0, len(items), BATCH), desc=desc, leave=False, unit="batch"):
        out.extend(fn(items[i : i + BATCH]))
    return out


def object_attribute_f1(predictions: list[str], scenes_objects: list[list[tuple[str, str, str]]]) -> float:
    """Micro F1 over (size, colour, shape) triples read from each caption vs the scene's objects."""
    tp = fp = fn = 0
    for pred, gold in zip(predictions, scenes_objects, strict=True):
        p, g = Counter(parse_caption_objects(pred)), Counter(gold)
        hit = sum((p & g).values())
        tp += hit
        fp += sum(p.values()) - hit
        fn += sum(g.values()) - hit
    return 2 * tp / max(1, 2 * tp + fp + fn)


def _n(split: str, limit: int | None) -> int | None:
    default = DEFAULT_SIZES[split]
    if limit is None:
        return default
    return limit if default is None else min(limit, default)


def evaluate_loaded(
    model: MobileMultiModalLLM, limit: int | None = None, tasks: Sequence[str] = TASKS
) -> dict[str, Any]:
    unknown = set(tasks) - set(EVAL_TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {EVAL_TASKS}")
    report: dict[str, Any] = {
        "model": str(model.manifest.get("name", "mobile-multimodal-llm")),
        "quantization": model.quantization,
        "size_bytes": model.size_bytes(),
        "tasks": {},
    }
    res = report["tasks"]
    if "captioning" in tasks:
        ex = load_eval_split("captioning", _n("captioning", limit))
        preds = _batched([e.image for e in ex], model.generate_captions, "captioning")
        refs = [list(e.captions) for e in ex]
        gold = [[(o.size, o.color, o.shape) for o in e.scene.objects] for e in ex if e.scene]
        res["captioning"] = {
            "primary": cider_d(preds, refs),
            "cider_d": cider_d(preds, refs),
            "bleu4": bleu4(preds, refs),
            "object_attribute_f1": object_attribute_f1(preds, gold),
            "n": len(ex),
            "examples": [
                {"prediction": p, "reference": r[0]} for p, r in zip(preds[:3], refs[:3], strict=True)
            ],
        }
    for split in ("ocr", "ocr_unseen_fonts"):
        if split in tasks:
            ex = load_eval_split(split, _n(split, limit))
            preds = _batched([e.image for e in ex], model.extract_texts, split)
            targets = [e.text for e in ex]
            res[split] = {
                "primary": word_accuracy(preds, targets),
                "word_accuracy": word_accuracy(preds, targets),
                "cer": char_error_rate(preds, targets),
                "n": len(ex),
            }
    for split in ("vqa", "easy_vqa"):
        if split in tasks:
            ex = load_eval_split(split, _n(split, limit))
            preds = _batched(
                ex, lambda b: model.answer_questions([e.image for e in b], [e.question for e in b]), split
            )
            acc = exact_match_accuracy(preds, [e.answer for e in ex])
            res[split] = {"primary": acc, "accuracy": acc, "n": len(ex)}
    if "retrieval" in tasks:
        ex = load_eval_split("retrieval", _n("retrieval", limit))
        img = np.concatenate(
            _batched([e.image for e in ex], lambda b: [model.get_image_embeddings(list(b))], "retrieval")
        )
        texts = [e.text for e in ex]
        txt = np.concatenate(_batched(texts, lambda b: [model.get_text_embeddings(list(b))], "retrieval"))
        # identical captions (two scenes with the same description) all count as correct
        correct = np.array([[a == b for b in texts] for a in texts])
        sim = img @ txt.T
        res["retrieval"] = {
            "primary": recall_at_k(sim, correct, 1),
            "recall_at_1": recall_at_k(sim, correct, 1),
            "recall_at_5": recall_at_k(sim, correct, min(5, len(ex))),
            "n": len(ex),
            "pool": len(ex),
        }
    res.update(evaluate_user_tasks(model, tasks, limit, _batched))
    return report


def evaluate_model(
    model: str | Path = "default",
    quantization: str = "fp32",
    limit: int | None = None,
    tasks: Sequence[str] = EVAL_TASKS,
    ocr_decoding: str = "auto",
) -> dict[str, Any]:
    """``ocr_decoding`` as ``MOBILE_MM_OCR_DECODING``: ``auto`` reads text lines with the
    character language model the model ships (``training/ocr_lm.py``) and greedily when it
    ships none, ``lm`` with the shipped one or one fitted on the training text, ``greedy``
    greedily. The report says how (``ocr_decoding``) when a language model read."""
    if ocr_decoding not in OCR_DECODINGS:
        raise ValueError(f"ocr_decoding must be one of {OCR_DECODINGS}, got {ocr_decoding!r}")
    loaded = MobileMultiModalLLM.from_pretrained(model, quantization=quantization)
    shipped = loaded.ocr_reader is not None
    if ocr_decoding == "greedy":
        loaded.ocr_reader = None
    elif ocr_decoding == "lm" and not shipped:
        loaded.ocr_reader = build_ocr_reader(loaded.tokenizer)
    report = evaluate_loaded(loaded, limit, tasks)
    if loaded.ocr_reader is not None:
        report["ocr_decoding"] = {**describe_reader(loaded.ocr_reader), "shipped": shipped}
    return report


def attach_report(model_dir: Path, report: dict[str, Any], canary: dict[str, Any] | None = None) -> None:
    """Store the eval report (and the canary report, the baseline a server's live canary runs are
    compared with: ``training/canary_set.py``) in the model's manifest (not in its own file list)."""
    manifest = checkpoint.read_manifest(model_dir)
    manifest["eval"] = report
    if canary is not None:
        manifest["canary"] = canary
    checkpoint.write_manifest(model_dir, manifest)
    (model_dir / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n")


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"model: {report['model']}  quantization: {report['quantization']}  size: "
        f"{report['size_bytes'] / 1e6:.2f} MB",
        f"{'task':<18}{'primary':>10}{'n':>8}  details",
    ]
    for task, r in report["tasks"].items():
        details = ", ".join(
            f"{k}={v:.4f}"
            for k, v in r.items()
            if k not in ("primary", "n", "examples", "pool") and isinstance(v, float)
        )
        lines.append(f"{task:<18}{r['primary']:>10.4f}{r['n']:>8}  {details}")
    decoding = report.get("ocr_decoding")
    lines.append(
        "OCR read greedily (each frame's best class)"
        if decoding is None
        else f"OCR read with a character language model: {decoding['decode']}, order {decoding['order']}, "
        f"alpha {decoding['alpha']}, beta {decoding['beta']}, width {decoding['width']}"
    )
    return "\n".join(lines)
