"""Training benchmark: seconds a step with the next batches drawn ahead by a worker process
(``--data-workers 1``, the default on 2 cores or more) against drawn in the training process
(``--data-workers 0``).

Both sides are ``mobile-mm train``'s own loop (``training.train.train_model``), run for the same
first steps of a preset's schedule (``stop_after``); a step's time is read from the run's
``train_log.jsonl`` (the difference of consecutive ``elapsed_s``), leaving out the first
``--skip`` steps (the worker's start, the first batches). Runs alternate (ABBA) so a busy
machine's drift hits both alike. The batches are the same either way (``tests/training``), so
the ratio is how many more steps a time budget holds.

The presets are the bundled model's two training runs (README, "Bundled model"): ``default``
from scratch (64-px scenes) and ``user-style-detail-continue`` from the bundled model (128-px
scenes, the 32x512 reader).

Usage::

    .venv/bin/python -m benchmarks.training.run                 # ~20 min on 2 cores
    .venv/bin/python -m benchmarks.training.run --steps 12 --skip 2 --rounds 1 --out /tmp/tb

Writes results.json, results.md and results.png under --out (default: beside this file).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PRESETS = ("default", "user-style-detail-continue")
WORKERS = (0, 1)


def step_seconds(log: Path, skip: int) -> list[float]:
    """Each step's seconds from a train_log.jsonl, the first ``skip`` steps left out."""
    elapsed = [json.loads(line)["elapsed_s"] for line in log.read_text().splitlines()]
    steps = [b - a for a, b in itertools.pairwise(elapsed)]
    if len(steps) <= skip:
        raise ValueError(f"{log} has {len(elapsed)} steps: too few to skip {skip}")
    return steps[skip:]


def timed_run(
    preset: str, workers: int, steps: int, skip: int, threads: int | None, init_from: Path | None
) -> list[float]:
    from mobile_multimodal.training.train import PRESETS as TRAIN_PRESETS
    from mobile_multimodal.training.train import TrainOptions, train_model

    needs_init = TRAIN_PRESETS[preset].reshape_init
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        out = Path(tmp) / "run"
        train_model(
            TrainOptions(
                out=out,
                preset=preset,
                stop_after=steps,
                evaluate=False,
                ocr_lm=False,
                threads=threads,
                data_workers=workers,
                init_from=init_from if needs_init else None,
            )
        )
        return step_seconds(out / "train_log.jsonl", skip)


def measure(
    presets: list[str], steps: int, skip: int, rounds: int, threads: list[int | None]
) -> dict[str, Any]:
    """Per preset and torch thread count: seconds a step without and with the worker."""
    from mobile_multimodal.model import bundled_model_dir

    init_from = bundled_model_dir()
    out: dict[str, Any] = {}
    for preset in presets:
        for count in threads:
            samples: dict[int, list[float]] = {w: [] for w in WORKERS}
            runs: dict[int, list[float]] = {w: [] for w in WORKERS}  # each run's median
            for r in range(rounds):
                for workers in WORKERS if r % 2 == 0 else WORKERS[::-1]:
                    seconds = timed_run(preset, workers, steps, skip, count, init_from)
                    samples[workers] += seconds
                    runs[workers].append(statistics.median(seconds))
            medians = {w: statistics.median(s) for w, s in samples.items()}
            out[f"{preset}, torch threads {count or 'default'}"] = {
                "preset": preset,
                "threads": count,
                **{
                    f"workers_{w}": {
                        "median_s": medians[w],
                        "mean_s": statistics.fmean(s),
                        "steps": len(s),
                        "run_medians_s": runs[w],
                    }
                    for w, s in samples.items()
                },
                "speedup": medians[0] / medians[1],
            }
    return out


def machine() -> dict[str, Any]:
    import torch
    from benchmarks.serving.run import host

    return {**host(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def markdown(result: dict[str, Any]) -> str:
    m, opts = result["machine"], result["options"]
    lines = [
        "# Training benchmark: batches drawn ahead by a worker process",
        "",
        f"{m['cpu']}, {m['cores']} cores (torch's default: {m['torch_threads']} threads); "
        f"torch {m['torch']}; "
        f"{opts['rounds']} rounds (ABBA) of {opts['steps']} steps per "
        f"side, the first {opts['skip']} of each run left out; load average (1 min) "
        f"{m['loadavg_at_start'][0]:.2f} at start, {m['loadavg_at_end'][0]:.2f} at end; "
        f"{result['finished_utc']}.",
        "",
        "`mobile-mm train`'s loop, `--data-workers 0` (batches drawn in the training process) "
        "against `--data-workers 1` (the next batches drawn by a worker process while the network "
        "trains; the same batches). `--data-workers`' default takes one worker for a single training "
        "process on 2 cores or more (`training/prefetch.py`). Seconds a step, median:",
        "",
        "| preset | torch threads | drawn in the training process | drawn ahead by a worker | speedup "
        "| each run's median, in the process / by a worker |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in result["presets"].values():
        spread = " / ".join(
            ", ".join(f"{v:.2f}" for v in r[f"workers_{w}"]["run_medians_s"]) for w in WORKERS
        )
        lines.append(
            f"| {r['preset']} | {r['threads'] or 'default'} | {r['workers_0']['median_s']:.3f} | "
            f"{r['workers_1']['median_s']:.3f} | {r['speedup']:.2f}x | {spread} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(result["presets"])
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    width = 0.38
    for i, (w, label) in enumerate(((0, "in the training process"), (1, "ahead, by a worker"))):
        values = [result["presets"][p][f"workers_{w}"]["median_s"] for p in presets]
        ax.bar([x + (i - 0.5) * width for x in range(len(presets))], values, width, label=label)
    ax.set_xticks(range(len(presets)), [p.replace(", ", "\n") for p in presets], fontsize=8)
    ax.set_ylabel("seconds a training step (median)")
    ax.set_title("Batches drawn ...")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--steps", type=int, default=20, help="steps per run")
    parser.add_argument("--skip", type=int, default=3, help="first steps of each run left out")
    parser.add_argument("--rounds", type=int, default=4, help="runs per side and preset, alternating")
    parser.add_argument(
        "--threads",
        default="default,1",
        help="torch thread counts to measure, comma-separated ('default': torch's)",
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.steps <= args.skip + 1:
        parser.error("--steps must exceed --skip + 1")
    result: dict[str, Any] = {"machine": machine()}
    result["options"] = {k: v for k, v in vars(args).items() if k != "out"}
    threads = [None if t == "default" else int(t) for t in args.threads.split(",")]
    result["presets"] = measure(args.presets.split(","), args.steps, args.skip, args.rounds, threads)
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    result["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    plot(result, args.out / "results.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
