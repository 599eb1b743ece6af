"""Before/after: the service at an older commit against the working tree, in one run.

A refactor that must not change speed (issue 17: "the serving and telemetry benchmarks must not
get slower") is judged by serving the same model from both code bases side by side on one
machine, never by comparing two runs made at different times (two runs here differ by more than
the effect sought). ``--before REV`` is exported with ``git archive`` into a temporary
directory and served from there (``PYTHONPATH`` puts it ahead of the editable install, checked
by the server's own import path); the working tree is served as ``after``. Both run at once with
the same settings; each round measures both, in an order that alternates, with ``wrk`` (closed
loop) for every task at concurrency 1 and 32. Per cell the result is the median over rounds of
the after/before ratio of requests per second and of p50/p99 latency, with the range of the
rounds' ratios.

The telemetry part measures what the service adds per request without a model in each code base
(``benchmarks/telemetry/micro.py`` of that code base: telemetry on minus off, microseconds), in
alternating blocks.

Usage::

    .venv/bin/python -m benchmarks.before_after.run --before 8855130 --rounds 5 --duration 8
    .venv/bin/python -m benchmarks.before_after.run --before 8855130 --rounds 1 --duration 2 \\
        --tasks captioning --out /tmp/ba          # a short check

Writes results.json and results.md under --out (default: beside this file). Needs ``wrk`` and
``git``; run it on a quiet machine (results.md records the load average at start).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.serving.run import machine, run_wrk
from benchmarks.serving.workload import task_body, write_body_file
from tests.integration.servers import free_port, stop_process, wait_http

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONCURRENCY = (1, 32)
# The tree before the architecture work of issue 17 (its first commit's parent): the default
# "before", so `python -m benchmarks.run_all before_after` repeats the committed comparison.
BEFORE_ARCHITECTURE = "8855130"
READY_TIMEOUT_S = 300


def export_tree(rev: str, into: Path) -> Path:
    """``rev``'s src/ and benchmarks/ (its own telemetry micro-benchmark) under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src", "benchmarks"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _env(src: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOBILE_MM_", "OTEL_"))}
    return {
        **env,
        "PYTHONPATH": str(src),
        "MOBILE_MM_DATA_DIR": str(data / "data"),
        "MOBILE_MM_LOG_DIR": str(data / "logs"),
        "MOBILE_MM_AUTH": "disabled",
        # The after code refuses work it expects to wait past 2 s (issue 16's admission, which
        # the before code may lack): at its bound (half the request timeout) it queues like the
        # before code, so both arms answer every request and are timed on the same work.
        "MOBILE_MM_MAX_QUEUE_WAIT_S": "5",
    }


def imported_from(src: Path) -> Path:
    """Where ``mobile_multimodal`` is imported from with ``src`` first on the path."""
    out = subprocess.run(
        [sys.executable, "-c", "import mobile_multimodal; print(mobile_multimodal.__file__)"],
        env={**os.environ, "PYTHONPATH": str(src)},
        cwd=src.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out).resolve()


@contextmanager
def serve(src: Path, model: str, quantization: str, scratch: Path) -> Iterator[str]:
    """``mobile-mm serve`` of the code base in ``src``; yields its URL once ``/ready``."""
    origin = imported_from(src)
    if not origin.is_relative_to(src.resolve()):
        raise RuntimeError(f"{src} would import mobile_multimodal from {origin}")
    port = free_port()
    scratch.mkdir(parents=True)
    cmd = [sys.executable, "-m", "mobile_multimodal.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model", model, "--quantization", quantization]
    with (scratch / "stdout.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=_env(src, scratch), cwd=src.parent, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", timeout_s=READY_TIMEOUT_S, process=proc)
        yield url
    finally:
        stop_process(proc)


def _ratios(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("rps", "p50_ms", "p99_ms"):
        ratios = [a[key] / b[key] for a, b in zip(after, before, strict=True) if b[key] > 0]
        out[key] = {
            "before": statistics.median(r[key] for r in before),
            "after": statistics.median(r[key] for r in after),
            "ratio": statistics.median(ratios) if ratios else None,
            "min": min(ratios, default=None),
            "max": max(ratios, default=None),
        }
    return out


def measure_serving(opts: argparse.Namespace, trees: dict[str, Path], scratch: Path) -> dict[str, Any]:
    scratch.mkdir(parents=True)
    bodies = {t: write_body_file(task_body(t), scratch / f"{t}.json") for t in opts.tasks}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {arm: {} for arm in trees}
    with ExitStack() as stack:
        urls = {
            arm: stack.enter_context(serve(src, opts.model, opts.quantization, scratch / arm))
            for arm, src in trees.items()
        }
        for url in urls.values():
            run_wrk(url, 8, 3, bodies[opts.tasks[0]])  # warm-up: allocator, code paths, connections
        for rnd in range(opts.rounds):
            order = list(urls) if rnd % 2 == 0 else list(reversed(urls))
            for task in opts.tasks:
                for c in CONCURRENCY:
                    for arm in order:
                        result = run_wrk(urls[arm], c, opts.duration, bodies[task])
                        if result["non_2xx"] or result["socket_errors"]:
                            raise RuntimeError(f"{arm} {task} c={c}: {result}")
                        runs[arm].setdefault(f"{task}@{c}", []).append(result)
            print(f"round {rnd + 1}/{opts.rounds} done", flush=True)
    return {cell: _ratios(runs["before"][cell], runs["after"][cell]) for cell in runs["after"]}


def _micro_once(src: Path, blocks: int, requests: int) -> dict[str, float]:
    """One run of ``src``'s own telemetry micro-benchmark (its code, its telemetry path)."""
    code = (
        "import json, pathlib, tempfile\n"
        "from benchmarks.telemetry.run import run_micro\n"
        f"r = run_micro({blocks}, {requests}, pathlib.Path(tempfile.mkdtemp()))\n"
        "print('MICRO', json.dumps({'added_us': r['median_diff_us']}))\n"
    )
    # src's own benchmarks/ first; tests/ (the OTLP receiver it starts) from this repository
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**_env(src, src.parent / "micro-scratch"), "PYTHONPATH": f"{src}:{src.parent}:{REPO}"},
        cwd=src.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("MICRO "))
    result: dict[str, float] = json.loads(line[len("MICRO ") :])
    return result


def measure_telemetry(opts: argparse.Namespace, trees: dict[str, Path]) -> dict[str, Any]:
    added: dict[str, list[float]] = {arm: [] for arm in trees}
    for rnd in range(opts.micro_rounds):
        for arm in list(trees) if rnd % 2 == 0 else list(reversed(trees)):
            added[arm].append(_micro_once(trees[arm], opts.micro_blocks, opts.micro_requests)["added_us"])
    ratios = [a / b for a, b in zip(added["after"], added["before"], strict=True) if b > 0]
    return {
        "added_us": {arm: statistics.median(v) for arm, v in added.items()},
        "runs_us": added,
        "ratio": statistics.median(ratios) if ratios else None,
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# Before/after: the service at an older commit against the working tree, one run",
        "",
        f"Before: `{result['before']}`; after: `{result['after']}`. Model `{result['model']}` at "
        f"{result['quantization']}; {result['rounds']} rounds of {result['duration_s']} s per cell "
        f"(wrk, closed loop), both servers up at once, the order alternating per round. Machine: "
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores; **load average at start "
        f"{result['load_average']}**.",
        "",
        "Ratios after / before, median over rounds (range): throughput > 1 and latency < 1 favour after.",
        "",
        "| task | c | req/s before | req/s after | throughput ratio | p50 ratio | p99 ratio |",
        "|---|---|---:|---:|---|---|---|",
    ]

    def cell(r: dict[str, Any]) -> str:
        if r["ratio"] is None:
            return "n/a"
        return f"**{r['ratio']:.3f}** ({r['min']:.3f}-{r['max']:.3f})"

    for name, r in result["serving"].items():
        task, c = name.split("@")
        lines.append(
            f"| {task} | {c} | {r['rps']['before']:.1f} | {r['rps']['after']:.1f} | {cell(r['rps'])} "
            f"| {cell(r['p50_ms'])} | {cell(r['p99_ms'])} |"
        )
    tel = result.get("telemetry")
    if tel:
        lines += [
            "",
            "## The telemetry path alone (each code base's own `benchmarks/telemetry/micro.py`, no model)",
            "",
            f"Added per request by telemetry (on minus off, median of {len(tel['runs_us']['after'])} "
            f"alternating runs): before {tel['added_us']['before']:.1f} µs, "
            f"after {tel['added_us']['after']:.1f} µs; ratio after / before **{tel['ratio']:.3f}**.",
        ]
    lines += ["", "![after / before per cell](results.png)", "", "Reproduce: `" + result["command"] + "`", ""]
    path.write_text("\n".join(lines))


def plot(result: dict[str, Any], path: Path) -> None:
    """After/before ratio per cell (median, with the rounds' range), one panel per measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(result["serving"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, (key, label) in zip(
        axes, (("rps", "throughput"), ("p50_ms", "p50"), ("p99_ms", "p99")), strict=True
    ):
        rows = [result["serving"][c][key] for c in cells]
        mid = [r["ratio"] for r in rows]
        err = [
            [m - r["min"] for m, r in zip(mid, rows, strict=True)],
            [r["max"] - m for m, r in zip(mid, rows, strict=True)],
        ]
        ax.errorbar(mid, range(len(cells)), xerr=err, fmt="o", capsize=3)
        ax.axvline(1.0, color="gray", linestyle=":")
        ax.set_title(f"{label}: after / before")
    axes[0].set_yticks(range(len(cells)), [c.replace("@", " c=") for c in cells])
    fig.suptitle(
        f"{result['before']} -> {result['after']} ({result['quantization']}, {result['rounds']} rounds)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", default=BEFORE_ARCHITECTURE, help="git revision of the 'before' code base"
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="int2")
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=["captioning", "ocr", "vqa"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--micro-rounds", type=int, default=6, help="0 skips the telemetry part")
    parser.add_argument("--micro-blocks", type=int, default=10)
    parser.add_argument("--micro-requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md and the plot")
    opts = parser.parse_args(argv)
    if opts.report_only:
        saved: dict[str, Any] = json.loads((opts.out / "results.json").read_text())
        write_markdown(saved, opts.out / "results.md")
        plot(saved, opts.out / "results.png")
        return saved
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        before = export_tree(opts.before, Path(tmp) / "before")
        trees = {"before": before / "src", "after": REPO / "src"}
        result: dict[str, Any] = {
            "before": opts.before,
            "after": head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else ""),
            "model": opts.model,
            "quantization": opts.quantization,
            "rounds": opts.rounds,
            "duration_s": opts.duration,
            "machine": machine(),
            "load_average": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m benchmarks.before_after.run "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        result["serving"] = measure_serving(opts, trees, Path(tmp) / "scratch")
        if opts.micro_rounds:
            result["telemetry"] = measure_telemetry(opts, {"before": before / "src", "after": REPO / "src"})
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, opts.out / "results.md")
    plot(result, opts.out / "results.png")
    print((opts.out / "results.md").read_text())
    return result


if __name__ == "__main__":
    main()
