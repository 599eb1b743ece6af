"""Refit a trained model's OCR language model and ship it to the model and its quantized
variants, with every record that depends on it brought up to date.

The language model is fitted on training text only (``training/ocr_lm.py``), so a better recipe
needs no retraining of the network: the new file replaces ``LM_FILE`` in the fp32 directory and
in each variant below it (a variant reads OCR with its parent's model), each manifest lists the
new file's hash, a variant's ``quantization.source`` names its parent's new files, and what the
language model changes is measured again and stored where training and ``mobile-mm quantize``
stored it: the OCR splits of each ``eval`` report (and ``eval_report.json``), the variants'
``baseline_eval`` and ``quantization_report.json`` losses, and the canary baseline a server's
live canary is compared with. Nothing else in a manifest changes.

Example (the bundled model; about two minutes on 2 cores)::

    python -m mobile_multimodal.training.ocr_lm_refresh src/mobile_multimodal/weights/default
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.ctc_lm import LmReader
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.tokenizer import Tokenizer
from mobile_multimodal.quantization.report import accuracy_losses, worst_loss
from mobile_multimodal.training.canary_set import evaluate_canary
from mobile_multimodal.training.evaluate import evaluate_loaded
from mobile_multimodal.training.ocr_lm import build_ocr_reader, ship_ocr_lm
from mobile_multimodal.training.quantize import REPORT_NAME

OCR_TASKS = ("ocr", "ocr_unseen_fonts")
EVAL_REPORT = "eval_report.json"


def variant_dirs(model_dir: Path) -> list[Path]:
    """The quantized variants stored below ``model_dir`` (``int8/``, ``int4/``, ``int2/``)."""
    return sorted(p for p in model_dir.iterdir() if (p / checkpoint.MANIFEST).is_file())


def _remeasure(directory: Path, limit: int | None, log: Callable[[str], None]) -> None:
    """Measure the OCR splits (at most ``limit`` lines each) and the canary of the model in
    ``directory`` again and store them in its manifest (and ``eval_report.json`` where it has one)."""
    model = MobileMultiModalLLM.from_pretrained(directory)
    log(f"measuring OCR and the canary of {directory} ({model.quantization})")
    ocr = evaluate_loaded(model, limit, OCR_TASKS)["tasks"]
    manifest = checkpoint.read_manifest(directory)
    if "eval" in manifest:
        manifest["eval"]["tasks"].update(ocr)
    manifest["canary"] = evaluate_canary(model)
    checkpoint.write_manifest(directory, manifest)
    report = directory / EVAL_REPORT
    if report.exists() and "eval" in manifest:
        report.write_text(json.dumps(manifest["eval"], indent=2) + "\n")


def _update_variant_records(variant: Path, parent: dict[str, Any]) -> None:
    """A variant's record of its parent (its files, its eval) and its loss report, after both
    were measured again: the losses as ``mobile-mm quantize`` computes them."""
    manifest = checkpoint.read_manifest(variant)
    section = manifest["quantization"]
    section["source"]["files"] = parent["files"]
    if "baseline_eval" in section and "eval" in parent:
        for task in OCR_TASKS:
            if task in section["baseline_eval"]["tasks"]:
                section["baseline_eval"]["tasks"][task] = parent["eval"]["tasks"][task]
    checkpoint.write_manifest(variant, manifest)
    path = variant / REPORT_NAME
    if path.exists() and "baseline_eval" in section and "eval" in manifest:
        report = json.loads(path.read_text())
        report["tasks"] = accuracy_losses(section["baseline_eval"], manifest["eval"])
        report["max_accuracy_loss"] = worst_loss(report["tasks"])
        report["within_alert_threshold"] = report["max_accuracy_loss"] <= report["alert_threshold"]
        path.write_text(json.dumps(report, indent=2) + "\n")


def refresh_ocr_lm(
    model_dir: Path,
    reader: LmReader | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Ship ``reader`` (default: ``ocr_lm.build_ocr_reader``'s for the model's charset) to the
    model in ``model_dir`` and every variant below it, and measure what it changes, at most
    ``limit`` lines per OCR split (module docstring). Returns {directory name: its manifest}."""
    manifest = checkpoint.read_manifest(model_dir)
    if reader is None:
        log("fitting the OCR language model on the training text")
        reader = build_ocr_reader(Tokenizer.from_dict(manifest["tokenizer"]))
    ship_ocr_lm(model_dir, reader)
    variants = variant_dirs(model_dir)
    for variant in variants:
        ship_ocr_lm(variant, reader)
    _remeasure(model_dir, limit, log)
    parent = checkpoint.read_manifest(model_dir)
    out = {model_dir.name: parent}
    for variant in variants:
        _remeasure(variant, limit, log)
        _update_variant_records(variant, parent)
        out[variant.name] = checkpoint.read_manifest(variant)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a trained fp32 model directory (its variants below it)")
    parser.add_argument("--limit", type=int, default=None, help="measure at most N lines per OCR split")
    args = parser.parse_args(argv)
    if not (args.model_dir / checkpoint.MANIFEST).is_file():
        parser.error(f"{args.model_dir} holds no {checkpoint.MANIFEST}: not a model directory")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    for name, manifest in refresh_ocr_lm(args.model_dir, limit=args.limit).items():
        tasks = manifest["eval"]["tasks"] if "eval" in manifest else {}
        print(name, {task: round(tasks[task]["primary"], 4) for task in OCR_TASKS if task in tasks})


__all__ = ["main", "refresh_ocr_lm", "variant_dirs"]

if __name__ == "__main__":
    main()
