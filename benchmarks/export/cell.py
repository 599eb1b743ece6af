"""One measurement of the export benchmark, in its own process (``run.py`` starts one per cell).

Three kinds of cell, each printing nothing and writing one JSON file:

- ``export``: ``export_model`` (validation included) of one format at one precision: wall time,
  CPU time (user + system, its lowering workers included), the manifest (sizes, validation)
  and this process's peak RSS;
- ``runtime``: the written bundle opened in its own runtime and driven by ``decode.BundleModel``
  from its description files: the eval report on the held-out splits (full by default), this
  process's RSS, then batch-1 latency per task (export/latency.py) of the bundle and of the
  PyTorch model at the same precision, task by task in turn in the same process;
- ``torch``: the eval report and RSS of the PyTorch model at that precision (eager, the reference).

Every cell runs torch and ONNX Runtime on one thread, so latency compares runtimes, not thread
pools. Memory: ``rss_peak_bytes`` is ``getrusage(RUSAGE_SELF).ru_maxrss`` of the cell's process
(the Python interpreter and the imported libraries included); ``rss_model_bytes`` is that peak
minus the RSS measured after the imports and before the model or bundle is loaded, i.e. what the
model, its runtime and the workload added.

Usage (run.py does this)::

    python -m benchmarks.export.cell export --format onnx --platform android --quantization int2 \
        --bundle /tmp/b --json /tmp/export.json
    python -m benchmarks.export.cell runtime --format onnx --bundle /tmp/b --json /tmp/onnx.json
    python -m benchmarks.export.cell torch --quantization int2 --json /tmp/torch.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from mobile_multimodal.export.latency import task_latency
from mobile_multimodal.training.evaluate import TASKS, evaluate_loaded

LATENCY_EXAMPLES = 8


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (lowering workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _tasks() -> list[str]:
    """The held-out tasks available here (easy-VQA's test split ships in an optional wheel)."""
    from mobile_multimodal.data.easyvqa import EasyVQAUnavailable, load_easy_vqa

    try:
        load_easy_vqa("test")
    except EasyVQAUnavailable:
        return [t for t in TASKS if t != "easy_vqa"]
    return list(TASKS)


def _accuracy(model: Any, examples: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    report = evaluate_loaded(model, examples, _tasks())
    return {
        "tasks": {t: {"primary": float(r["primary"]), "n": int(r["n"])} for t, r in report["tasks"].items()},
        "accuracy_wall_s": time.perf_counter() - start,
    }


def export_cell(args: argparse.Namespace) -> dict[str, Any]:
    from mobile_multimodal.export.pipeline import export_model

    load_before = os.getloadavg()[0]  # other work on the machine while this export ran
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    manifest = export_model(
        args.model, platform=args.platform, fmt=args.format, quantization=args.quantization, out=args.bundle
    )
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "cpu_s": _cpu_seconds() - cpu_before,
        "manifest": manifest,
        "rss_peak_bytes": _peak_rss_bytes(),
        "load_avg_1m": [load_before, os.getloadavg()[0]],
    }


def runtime_cell(args: argparse.Namespace) -> dict[str, Any]:
    from mobile_multimodal.export.decode import BundleModel, load_bundle
    from mobile_multimodal.export.formats import writer_for

    baseline = _rss_bytes()
    bundle = load_bundle(args.bundle)
    runner = writer_for(args.format).open(args.bundle, bundle.description)
    if isinstance(runner, str):
        return {"executed": False, "reason": runner}
    exported = BundleModel(bundle, runner)
    result = _accuracy(exported, args.examples)
    peak = _peak_rss_bytes()  # before the PyTorch model below joins this process
    # Latency beside PyTorch eager at the same precision, task by task in turn in this process,
    # so a change of machine load hits both sides alike.
    from mobile_multimodal.model import MobileMultiModalLLM

    reference = MobileMultiModalLLM.from_pretrained(args.model, quantization=args.quantization)
    latency: dict[str, float] = {}
    pytorch_latency: dict[str, float] = {}
    for task in result["tasks"]:
        latency.update(task_latency(exported, [task], args.latency_examples))
        pytorch_latency.update(task_latency(reference, [task], args.latency_examples))
    return {
        "executed": True,
        **result,
        "latency_s": latency,
        "pytorch_latency_s": pytorch_latency,
        "latency_examples": args.latency_examples,
        "rss_peak_bytes": peak,
        "rss_model_bytes": peak - baseline,
    }


# Tasks whose primary metric is a mean over examples, so shards of the split add up exactly.
SHARDABLE = {"vqa": "exact_match", "easy_vqa": "exact_match", "ocr": "word", "ocr_unseen_fonts": "word"}


def task_cell(args: argparse.Namespace) -> dict[str, Any]:
    """One task of the eval report for the bundle, on the full split or on a strided shard of it
    (examples i, i+k, i+2k, ...; the parent adds the shards' hits up to the report's mean)."""
    from mobile_multimodal.export.decode import BundleModel, load_bundle
    from mobile_multimodal.export.formats import writer_for

    bundle = load_bundle(args.bundle)
    runner = writer_for(args.format).open(args.bundle, bundle.description)
    assert not isinstance(runner, str), runner
    model = BundleModel(bundle, runner)
    if args.shards == 1:
        report = evaluate_loaded(model, None, [args.task])["tasks"][args.task]
        return {"task": args.task, "n": int(report["n"]), "primary": float(report["primary"])}
    from mobile_multimodal.data.splits import DEFAULT_SIZES, load_eval_split
    from mobile_multimodal.training.eval_metrics import exact_match_accuracy, word_accuracy

    examples = load_eval_split(args.task, DEFAULT_SIZES[args.task])[args.shard :: args.shards]
    if SHARDABLE[args.task] == "exact_match":
        predictions = model.answer_questions([e.image for e in examples], [e.question for e in examples])
        hits = sum(exact_match_accuracy([p], [e.answer]) for p, e in zip(predictions, examples, strict=True))
    else:
        predictions = model.extract_texts([e.image for e in examples])
        hits = sum(word_accuracy([p], [e.text]) for p, e in zip(predictions, examples, strict=True))
    return {
        "task": args.task,
        "n": len(examples),
        "hits": int(hits),
        "shard": args.shard,
        "shards": args.shards,
    }


def torch_cell(args: argparse.Namespace) -> dict[str, Any]:
    from mobile_multimodal.model import MobileMultiModalLLM

    baseline = _rss_bytes()
    model = MobileMultiModalLLM.from_pretrained(args.model, quantization=args.quantization)
    result = _accuracy(model, args.examples)
    peak = _peak_rss_bytes()
    return {"executed": True, **result, "rss_peak_bytes": peak, "rss_model_bytes": peak - baseline}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("export", "runtime", "torch", "task"))
    parser.add_argument("--task")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--format")
    parser.add_argument("--platform")
    parser.add_argument("--quantization", default="fp32")
    parser.add_argument("--model", default="default")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--examples", type=int, default=None, help="per task (default: full splits)")
    parser.add_argument("--latency-examples", type=int, default=LATENCY_EXAMPLES)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cell = {"export": export_cell, "runtime": runtime_cell, "torch": torch_cell, "task": task_cell}[args.kind]
    result = cell(args)
    args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
