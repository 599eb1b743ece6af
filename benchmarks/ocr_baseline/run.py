"""OCR baseline: a real PP-OCR system (rapidocr, ONNX Runtime on CPU) on our OCR eval splits.

Gives our model's `ocr` / `ocr_unseen_fonts` numbers a peer to stand next to. rapidocr ships
its ONNX weights inside the wheel; this script points rapidocr at those files explicitly, so
its download code path is never entered and the run is offline by construction.

Settings, because our eval images are single tight text lines:
- ``rec``: the recognizer alone on the whole line image (detection skipped, as for a crop).
- ``det+cls+rec``: the full pipeline (text detection, angle classifier, recognizer), the texts
  of the detected boxes joined with a space in rapidocr's reading order, with the detector's
  resize set to PaddleOCR's classic ``limit_type=max, limit_side_len=960`` (shrink only).
- ``det+cls+rec:defaults``: the same with rapidocr's out-of-the-box detector resize
  (``limit_type=min, limit_side_len=736``), made for pages and photos: it blows a 38-pixel line
  up ~19x and the detector then mostly finds nothing. Slow (~1 image/s), so it runs on at most
  ``--defaults-n`` examples per split; reported to show why the other setting is used.

Metrics are reported two ways. ``raw``: rapidocr's output as-is (stripped), case-sensitive.
``case_folded``: lowercased with runs of whitespace collapsed. Our targets are lowercase only
(our OCR charset has no capitals), so case_folded is the number comparable to our model's.

Usage::

    nice -n 10 .venv/bin/python -m benchmarks.ocr_baseline.run            # split default sizes
    nice -n 10 .venv/bin/python -m benchmarks.ocr_baseline.run --n 200 --threads 1 --modes rec

Writes benchmarks/ocr_baseline/results.json and results.md (or under --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import rapidocr
from PIL import Image
from rapidocr import RapidOCR

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.training.eval_metrics import char_error_rate, word_accuracy

SPLITS = ("ocr", "ocr_unseen_fonts")
MODES = ("rec", "det+cls+rec", "det+cls+rec:defaults")
# Detector resize per mode (None: rapidocr's config default); "rec" never runs the detector.
_DET_LIMITS: dict[str, tuple[str, int] | None] = {
    "rec": None,
    "det+cls+rec": ("max", 960),
    "det+cls+rec:defaults": None,
}
DEFAULTS_N = 100
OUT_DIR = Path(__file__).resolve().parent
N_MISREADS = 8  # examples of errors kept per split and mode, so a reader can see what fails


def bundled_model_files() -> dict[str, Path]:
    """The det / cls / rec ONNX files shipped inside the installed rapidocr wheel."""
    models_dir = Path(rapidocr.__file__).resolve().parent / "models"
    found: dict[str, Path] = {}
    for task in ("det", "cls", "rec"):
        matches = sorted(models_dir.glob(f"*_{task}_*.onnx"))
        if len(matches) != 1:
            # probably a different rapidocr release with another layout: refuse rather than guess
            raise FileNotFoundError(
                f"expected exactly one *_{task}_*.onnx in {models_dir}, found {[m.name for m in matches]}; "
                "install the pinned version: pip install 'mobile-multimodal-llm[baselines]'"
            )
        found[task] = matches[0]
    return found


def case_fold(text: str) -> str:
    return " ".join(text.lower().split())


class RapidOcrBaseline:
    """rapidocr in one of MODES, on the wheel's own model files.

    Usage: ``RapidOcrBaseline("rec", threads=1).read(line_image)`` → ``"hello"``.
    """

    def __init__(self, mode: str = "rec", threads: int = -1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        self.mode = mode
        self.model_files = bundled_model_files()
        self.threads = threads
        params: dict[str, Any] = {
            "Global.log_level": "error",  # "warning" logs every line the detector finds empty
            "Det.model_path": str(self.model_files["det"]),
            "Cls.model_path": str(self.model_files["cls"]),
            "Rec.model_path": str(self.model_files["rec"]),
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1 if threads > 0 else -1,
        }
        limit = _DET_LIMITS[mode]
        if limit is not None:
            params["Det.limit_type"], params["Det.limit_side_len"] = limit
        self.engine = RapidOCR(params=params)

    def read(self, image: Image.Image) -> str:
        """The text rapidocr reads in one text-line image ("" when it finds none)."""
        use_det = self.mode != "rec"
        out = self.engine(image, use_det=use_det, use_cls=use_det, use_rec=True)
        texts = getattr(out, "txts", None)  # an empty result object has txts None
        return " ".join(t.strip() for t in texts or () if t.strip())


@dataclass(frozen=True)
class ModeResult:
    n: int
    word_accuracy: float
    cer: float
    word_accuracy_case_folded: float
    cer_case_folded: float
    images_per_s: float
    seconds: float
    misreads: list[dict[str, str]]


def evaluate(baseline: RapidOcrBaseline, images: Sequence[Image.Image], targets: Sequence[str]) -> ModeResult:
    """Read every image, then score the readings against the targets with our metrics."""
    baseline.read(images[0])  # warm-up: ONNX Runtime's first run allocates and optimises
    start = time.perf_counter()
    preds = [baseline.read(img) for img in images]
    seconds = time.perf_counter() - start
    folded = [case_fold(p) for p in preds]
    gold_folded = [case_fold(t) for t in targets]
    misreads = [
        {"target": t, "read": p} for p, t in zip(preds, targets, strict=True) if case_fold(p) != case_fold(t)
    ]
    return ModeResult(
        n=len(targets),
        word_accuracy=word_accuracy(preds, list(targets)),
        cer=char_error_rate(preds, list(targets)),
        word_accuracy_case_folded=word_accuracy(folded, gold_folded),
        cer_case_folded=char_error_rate(folded, gold_folded),
        images_per_s=len(images) / seconds,
        seconds=seconds,
        misreads=misreads[:N_MISREADS],
    )


def run(
    n: int | None,
    out_dir: Path = OUT_DIR,
    threads: int = -1,
    modes: Sequence[str] = MODES,
    defaults_n: int = DEFAULTS_N,
) -> dict[str, Any]:
    """Evaluate rapidocr on both OCR splits in every mode; write results.json and results.md."""
    baselines = {mode: RapidOcrBaseline(mode, threads=threads) for mode in modes}
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        examples = load_eval_split(split, n=n)
        if not examples:
            raise ValueError(f"split {split!r} returned no examples (n={n})")
        splits[split] = {}
        for mode, baseline in baselines.items():
            # the defaults setting takes ~1 s an image: a prefix of the same examples
            subset = examples[:defaults_n] if mode == "det+cls+rec:defaults" else examples
            result = evaluate(baseline, [ex.image for ex in subset], [ex.text for ex in subset])
            splits[split][mode] = asdict(result)
    results: dict[str, Any] = {
        "baseline": "rapidocr (PP-OCR, ONNX Runtime CPU)",
        "versions": {pkg: metadata.version(pkg) for pkg in ("rapidocr", "onnxruntime")},
        "model_files": {
            task: {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
            for task, path in bundled_model_files().items()
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "onnxruntime_threads": threads,
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "n_requested": n,
        "det_limits": {m: _DET_LIMITS[m] for m in modes},
        "splits": splits,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(render_markdown(results), encoding="utf-8")
    return results


def render_markdown(results: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    files = ", ".join(f"{k}: `{v['file']}`" for k, v in results["model_files"].items())
    machine = results["machine"]
    lines = [
        "# OCR baseline: rapidocr on our OCR eval splits",
        "",
        f"{versions}; model files from the wheel ({files}).",
        f"CPU only, {machine['cpu_count']} cores, ONNX Runtime intra-op threads "
        f"{machine['onnxruntime_threads']} (-1 = all), 1-min load average at the end "
        f"{machine['load_avg_1m_at_end']:.2f}.",
        "",
        "`case-folded` lowercases and collapses whitespace: our targets are lowercase only, so these",
        "are the numbers to compare with our model's `ocr` / `ocr_unseen_fonts` tasks. `raw` is",
        "rapidocr's output as-is, case-sensitive. Word accuracy = exact line match; CER = edits /",
        "target characters. `rec` runs the recognizer on the whole line image; `det+cls+rec` the",
        "full pipeline with the detector resize limited to shrinking (`limit_type=max, 960`);",
        "`det+cls+rec:defaults` the full pipeline exactly as rapidocr configures it (`min, 736`:",
        "a tight 38-pixel line is blown up ~19x), on a prefix of the examples.",
        "",
        "| split | mode | n | word acc (case-folded) | CER (case-folded) "
        "| word acc (raw) | CER (raw) | images/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split, modes in results["splits"].items():
        for mode, r in modes.items():
            lines.append(
                f"| {split} | {mode} | {r['n']} | {r['word_accuracy_case_folded']:.4f} "
                f"| {r['cer_case_folded']:.4f} | {r['word_accuracy']:.4f} | {r['cer']:.4f} "
                f"| {r['images_per_s']:.1f} |"
            )
    lines += ["", "## Sample misreads (case-folded comparison)", ""]
    for split, modes in results["splits"].items():
        for mode, r in modes.items():
            shown = "; ".join(f"`{m['target']}` → `{m['read']}`" for m in r["misreads"]) or "none"
            lines.append(f"- {split} / {mode}: {shown}")
    lines += ["", "Regenerate: `nice -n 10 .venv/bin/python -m benchmarks.ocr_baseline.run`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="examples per split (default: the split's size)")
    parser.add_argument("--threads", type=int, default=-1, help="ONNX Runtime intra-op threads (-1 = all)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for results.json / results.md")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--defaults-n", type=int, default=DEFAULTS_N, help="examples per split for det+cls+rec:defaults"
    )
    args = parser.parse_args(argv)
    results = run(args.n, args.out, args.threads, args.modes, args.defaults_n)
    print(render_markdown(results))


if __name__ == "__main__":
    main()
