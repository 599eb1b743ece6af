"""OCR decoding benchmark: greedy CTC against the character language model's beam search, in one run.

What reading with the character language model (the default where the model ships one:
``MOBILE_MM_OCR_DECODING=auto``; ``mobile-mm eval --ocr-decoding``) buys and costs, per line:
word accuracy on the OCR splits with each decoding, and the time of each decoding beside the
reader's own forward pass (batch 1), so the search's cost is read as a fraction of a request.

- The reader runs once per line; both decodings read the same log-probabilities, so accuracy
  differences are the decoding's alone. The two decodings alternate line by line (which goes
  first flips every line), one thread, so a drift of the machine hits both alike.
- ``fit_s``: fitting the language model (what ``mobile-mm train`` pays to ship it, and a
  server's first start with ``lm`` for a model that ships none); ``cached_load_s``: parsing the
  written file (what every start pays for a shipped or cached model).

Usage::

    .venv/bin/python -m benchmarks.ocr_decoding.run                        # bundled model, fp32 and int2
    .venv/bin/python -m benchmarks.ocr_decoding.run --model DIR --quantization fp32 --n 100 --out /tmp/ocr

Writes results.json, results.md and results.png under --out (default: beside this file).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.runtime.run import percentile

HERE = Path(__file__).resolve().parent
SPLITS = ("ocr", "ocr_unseen_fonts", "user_ocr", "user_ocr_mixed")


def _lines(split: str, n: int) -> tuple[list[Any], list[str]]:
    if split.startswith("user_"):
        from mobile_multimodal.data.user_style import load_user_split

        user = load_user_split(split, n)
        return [e.image for e in user], [e.text for e in user]
    from mobile_multimodal.data.splits import load_eval_split

    examples = load_eval_split(split, n)
    return [e.image for e in examples], [e.text for e in examples]


def _accuracy(texts: list[str], targets: list[str]) -> float:
    return sum(t.strip() == g.strip() for t, g in zip(texts, targets, strict=True)) / len(targets)


def measure(
    model_name: str, quantization: str, splits: Sequence[str], n: int, lm_lines: int | None = None
) -> dict[str, Any]:
    import torch

    from mobile_multimodal.model import MobileMultiModalLLM
    from mobile_multimodal.model.ctc_lm import CharNgramLM
    from mobile_multimodal.model.preprocess import text_line_tensor
    from mobile_multimodal.training.ocr_lm import STYLED_LINES, build_ocr_reader, cached_ocr_reader

    model = MobileMultiModalLLM.from_pretrained(model_name, quantization=quantization)
    cfg, tok = model.config, model.tokenizer
    lines = STYLED_LINES if lm_lines is None else lm_lines
    start = time.perf_counter()
    reader = build_ocr_reader(tok, styled_lines=lines)
    fit_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        cached_ocr_reader(tok, Path(cache), styled_lines=lines)  # fits and writes
        (written,) = Path(cache).glob("*.json.gz")
        start = time.perf_counter()
        # parsed as a new process parses it (read_lm_file keeps one parse per content in a process)
        CharNgramLM.from_dict(json.loads(gzip.decompress(written.read_bytes())))
        cached_load_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "styled_lines": lines,
        "fit_s": fit_s,
        "cached_load_s": cached_load_s,
        "ngrams": len(reader.lm.counts),
        "splits": {},
    }
    for split in splits:
        images, targets = _lines(split, n)
        reader_ms, greedy_ms, lm_ms = [], [], []
        greedy_text, lm_text = [], []
        for i, image in enumerate(images):
            line = text_line_tensor(image, cfg.ocr_height, cfg.ocr_width, cfg.ocr_fit)[None]
            start = time.perf_counter()
            with torch.inference_mode():
                log_probs = model.network.read_text(line).float().log_softmax(-1)[0].numpy()
            reader_ms.append((time.perf_counter() - start) * 1e3)
            order = ("greedy", "lm") if i % 2 == 0 else ("lm", "greedy")
            for which in order:
                start = time.perf_counter()
                if which == "greedy":
                    greedy_text.append(tok.decode_ctc(log_probs.argmax(-1).tolist()))
                    greedy_ms.append((time.perf_counter() - start) * 1e3)
                else:
                    lm_text.append(reader.read(log_probs, tok.charset))
                    lm_ms.append((time.perf_counter() - start) * 1e3)
        result["splits"][split] = {
            "n": len(targets),
            "greedy_word_accuracy": _accuracy(greedy_text, targets),
            "lm_word_accuracy": _accuracy(lm_text, targets),
            "reader_ms_median": statistics.median(reader_ms),
            "greedy_ms_median": statistics.median(greedy_ms),
            "lm_ms_median": statistics.median(lm_ms),
            "lm_ms_p90": percentile(lm_ms, 90),
        }
    return result


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    meta = results["machine"]
    lines = [
        "# OCR decoding: greedy CTC vs the character language model (beam search)",
        "",
        f"{meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}, {meta['threads']} thread; "
        f"model `{results['model']}`; {results['note']}",
        "",
        "Word accuracy (exact line), and the time per line of the reader's forward pass (batch 1) "
        "and of each decoding of its output, medians; the decodings alternate line by line.",
        "",
        "| precision | split | n | greedy | language model | reader ms | greedy ms | LM ms (p90) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for precision, run in results["precisions"].items():
        for split, r in run["splits"].items():
            lines.append(
                f"| {precision} | {split} | {r['n']} | {r['greedy_word_accuracy']:.3f} | "
                f"**{r['lm_word_accuracy']:.3f}** | {r['reader_ms_median']:.2f} | "
                f"{r['greedy_ms_median']:.3f} | {r['lm_ms_median']:.2f} ({r['lm_ms_p90']:.2f}) |"
            )
    lines += [
        "",
        "| precision | fit the model (`mobile-mm train`), s | parse the file (every start), s | n-grams |",
    ]
    lines += ["|---|---:|---:|---:|"]
    for precision, run in results["precisions"].items():
        lines.append(f"| {precision} | {run['fit_s']:.1f} | {run['cached_load_s']:.2f} | {run['ngrams']:,} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(results, out / "results.png")


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(p, s, r) for p, run in results["precisions"].items() for s, r in run["splits"].items()]
    labels = [f"{s}\n{p}" for p, s, _ in rows]
    x = range(len(rows))
    fig, (acc, ms) = plt.subplots(1, 2, figsize=(12, 4))
    acc.bar([i - 0.2 for i in x], [r["greedy_word_accuracy"] for *_, r in rows], 0.4, label="greedy")
    acc.bar([i + 0.2 for i in x], [r["lm_word_accuracy"] for *_, r in rows], 0.4, label="language model")
    acc.set_xticks(list(x), labels, fontsize=7)
    acc.set_ylabel("word accuracy")
    acc.set_ylim(0, 1)
    acc.legend()
    ms.bar(list(x), [r["reader_ms_median"] for *_, r in rows], label="reader (batch 1)")
    ms.bar(
        list(x),
        [r["lm_ms_median"] for *_, r in rows],
        bottom=[r["reader_ms_median"] for *_, r in rows],
        label="language-model decoding",
    )
    ms.set_xticks(list(x), labels, fontsize=7)
    ms.set_ylabel("ms per line (median)")
    ms.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="fp32,int2", help="comma-separated precisions")
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument("--n", type=int, default=300, help="lines per split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--lm-lines", type=int, default=None, help="styled training lines the model is fitted on"
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    import torch
    from benchmarks.serving.run import cpu_name

    torch.set_num_threads(args.threads)
    precisions = [q.strip() for q in args.quantization.split(",") if q.strip()]
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        parser.error(f"unknown splits {unknown}; choose from {list(SPLITS)}")
    results: dict[str, Any] = {
        "model": args.model,
        "note": args.note or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "precisions": {q: measure(args.model, q, splits, args.n, args.lm_lines) for q in precisions},
    }
    write_report(results, args.out)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
