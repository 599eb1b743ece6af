"""Export benchmark: every available format x precision of the bundled model, measured on this machine.

For each format whose toolchain is installed (``mobile-mm export check``) and each precision:

- export time: ``export_model`` wall time, validation included (target < 60 s on 2 cores; the
  guide alerts at 5 min), in a process of its own, one export at a time;
- bundle size (the manifest's files) and the export process's peak RSS;
- task accuracy of the exported bundle in its own runtime on the held-out splits (full by
  default; ``--examples N`` caps them except for the ``--full`` cells, INT2 ONNX by default, and
  the results say which), next to the PyTorch model's at the same precision on the same
  examples: equal (to the last digit) is the bar for INT2 ONNX;
- batch-1 latency per task in the runtime beside PyTorch eager (their ratio), and the peak RSS
  of each (runtime and PyTorch measured in separate processes of the same run).

Formats that cannot execute here (Core ML on Linux) get export time, size and the manifest's
structural validation only.

Each measurement runs in its own process (cell.py) and is kept under ``--work`` (in var/, not
committed) as it finishes, so a run that is stopped resumes where it was (``--fresh`` starts
over). Cells run ``--jobs`` at a time, exports always alone.

Usage::

    nice -n 10 .venv/bin/python -m benchmarks.export.run                         # everything
    nice -n 10 .venv/bin/python -m benchmarks.export.run --formats onnx --quantizations int2 fp32
    .venv/bin/python -m benchmarks.export.run --examples 4 --latency-examples 1 --out /tmp/eb
    .venv/bin/python -m benchmarks.export.run --readme-table     # README's table from results.json

Writes results.json, results.md and results.png into --out (default: this directory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.export.report import readme_table, write_markdown, write_plot

from mobile_multimodal.errors import ExportError
from mobile_multimodal.export.formats import FORMATS, PLATFORM_FORMATS, PLATFORMS, QUANTIZATIONS, writer_for

OUT = Path(__file__).resolve().parent
REPO = OUT.parents[1]
EXPORT_TARGET_S = 60.0
EXPORT_TIMEOUT_S = 1800.0  # 30x the target: a cell this slow is broken, not slow
CELL_TIMEOUT_S = 7200.0  # the longest full-split shard takes ~30 min on a loaded machine


def available_formats(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """(formats whose writer and toolchain are here, format -> why not for the others)."""
    ok, skipped = [], {}
    for fmt in wanted:
        try:
            writer_for(fmt)
        except ExportError as exc:
            skipped[fmt] = exc.message
            continue
        ok.append(fmt)
    return ok, skipped


def format_quantizations(fmt: str) -> tuple[str, ...]:
    """The precisions ``fmt``'s writer exports (TFLite: fp32 and int8 only)."""
    return tuple(getattr(writer_for(fmt), "quantizations", QUANTIZATIONS))


def platform_for(fmt: str) -> str:
    return next(p for p in PLATFORMS if fmt in PLATFORM_FORMATS[p])


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "onnx", "onnxruntime", "executorch", "coremltools", "mobile-multimodal-llm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def model_fingerprint(model: str) -> str:
    """sha256 over every manifest of ``model``'s directory (fp32 and each variant): they hash the
    weight files they list, so a retrained or re-quantized model changes it."""
    from mobile_multimodal.model.llm import resolve_model_dir

    root = resolve_model_dir(model, "fp32")
    digest = hashlib.sha256()
    for manifest in sorted(root.rglob("manifest.json")):
        digest.update(str(manifest.relative_to(root)).encode() + b"\0" + manifest.read_bytes())
    return digest.hexdigest()


def keep_cells_of(work: Path, fingerprint: str) -> bool:
    """Discard ``work``'s kept cells when they were measured on another model (or on one not
    recorded); stamp ``work`` with ``fingerprint``. Whether kept cells were discarded: a cell kept
    from the model before would otherwise be reported as this model's."""
    stamp = work / "model.json"
    discarded = False
    if work.exists() and any(work.iterdir()):
        kept = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
        if kept != fingerprint:
            shutil.rmtree(work)
            discarded = True
    work.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        stamp.write_text(json.dumps({"fingerprint": fingerprint}))
    return discarded


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


class Cells:
    """Runs cell.py processes, keeping each result as <work>/<name>.json."""

    def __init__(
        self,
        work: Path,
        model: str,
        latency_examples: int,
        measure: bool = True,
        timeouts: dict[str, float] | None = None,
    ) -> None:
        self.work, self.model, self.latency_examples = work, model, latency_examples
        self.measure = measure  # False: report the kept cells only, the others as not measured
        # cell kind ("export", "runtime", "task", "torch") -> seconds before it is stopped and
        # recorded as timed out, so one slow cell does not sink the run
        self.timeouts = timeouts or {}
        work.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, args: list[str], examples: int | None = None) -> dict[str, Any]:
        path = self.work / f"{name}.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        if not self.measure:
            return {"error": "not measured in this run"}
        command = [sys.executable, "-m", "benchmarks.export.cell", *args, "--model", self.model]
        command += ["--latency-examples", str(self.latency_examples), "--json", str(path)]
        if examples is not None:
            command += ["--examples", str(examples)]
        log = self.work / f"{name}.log"
        print(f"--- {name}", flush=True)
        start = time.perf_counter()
        timeout = self.timeouts.get(args[0])
        with log.open("w") as out:
            # a session of its own, so a timeout stops the cell's worker processes too
            cell = subprocess.Popen(
                command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                returncode = cell.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(cell.pid, signal.SIGKILL)
                cell.wait()
                print(f"    {name} stopped after {timeout:g} s", flush=True)
                return {"error": f"timed out: stopped after {timeout:g} s (the cell timeout)"}
        if returncode != 0:
            tail = log.read_text()[-1500:]
            print(f"    {name} failed (exit {returncode}):\n{tail}", flush=True)
            return {"error": f"exit {returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
        print(f"    {name} done in {time.perf_counter() - start:.0f} s", flush=True)
        return dict(json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS))
    parser.add_argument("--quantizations", nargs="+", default=list(QUANTIZATIONS))
    parser.add_argument("--model", default="default")
    parser.add_argument("--examples", type=int, default=None, help="per task; default: the full splits")
    parser.add_argument(
        "--format-examples",
        nargs="*",
        default=[],
        help="FORMAT=N: examples per task for that format's cells instead of --examples",
    )
    parser.add_argument(
        "--full",
        nargs="*",
        default=["onnx-int2"],
        help="FORMAT-PRECISION cells measured on the full splits even with --examples",
    )
    parser.add_argument("--latency-examples", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2, help="accuracy cells at a time (exports run alone)")
    parser.add_argument(
        "--export-timeout",
        type=float,
        default=EXPORT_TIMEOUT_S,
        help="seconds before an export cell is stopped and recorded as timed out",
    )
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=CELL_TIMEOUT_S,
        help="seconds before an accuracy/latency cell is stopped and recorded as timed out",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--work", type=Path, default=REPO / "var" / "bench-export", help="kept cells and bundles"
    )
    parser.add_argument("--fresh", action="store_true", help="discard the kept cells of an earlier run")
    parser.add_argument(
        "--report-only", action="store_true", help="write the results of the kept cells; measure nothing"
    )
    parser.add_argument(
        "--readme-table",
        action="store_true",
        help="print the README's formats x precisions table from <--out>/results.json; measure nothing",
    )
    args = parser.parse_args(argv)
    if args.readme_table:
        print("\n".join(readme_table(json.loads((args.out / "results.json").read_text()))))
        return 0
    work = args.work
    if args.fresh and work.exists():
        shutil.rmtree(work)
    if not args.report_only and keep_cells_of(work, model_fingerprint(args.model)):
        print(f"the cells kept in {work} were of another model: measuring again", flush=True)
    formats, skipped = available_formats(args.formats)
    timeouts = {"export": args.export_timeout}
    timeouts.update(dict.fromkeys(("runtime", "task", "torch"), args.cell_timeout))
    cells = Cells(work, args.model, args.latency_examples, measure=not args.report_only, timeouts=timeouts)

    exports: dict[tuple[str, str], dict[str, Any]] = {}
    for fmt in formats:
        for q in (q for q in args.quantizations if q in format_quantizations(fmt)):
            bundle = work / f"bundle-{fmt}-{q}"
            name = f"export-{fmt}-{q}"
            if not args.report_only and not (work / f"{name}.json").exists() and bundle.exists():
                shutil.rmtree(bundle)  # a bundle left by a run stopped before its cell was kept
            exports[(fmt, q)] = cells.run(
                name,
                [
                    "export",
                    "--format",
                    fmt,
                    "--platform",
                    platform_for(fmt),
                    "--quantization",
                    q,
                    "--bundle",
                    str(bundle),
                ],
            )

    # (cell name, arguments, examples per task); the PyTorch reference once per precision and size
    jobs: dict[str, tuple[list[str], int | None]] = {}
    full_tasks: dict[tuple[str, str], list[str]] = {}
    for (fmt, q), result in exports.items():
        if "error" in result or not result["manifest"]["validation"]["executed"]:
            continue
        n = examples_for(args, fmt, q)
        bundle = str(work / f"bundle-{fmt}-{q}")
        jobs[f"torch-{q}-{n or 'full'}"] = (["torch", "--quantization", q], n)
        if n is not None:
            jobs[f"runtime-{fmt}-{q}-{n}"] = (["runtime", "--format", fmt, "--bundle", bundle], n)
            continue
        # The full splits: one process per task, the long ones in strided shards, so the work
        # spreads over --jobs processes; latency and memory from a separate one-example cell.
        jobs[f"runtime-{fmt}-{q}-latency"] = (["runtime", "--format", fmt, "--bundle", bundle], 1)
        names = []
        for task in held_out_tasks():
            shards = FULL_SHARDS.get(task, 1)
            for i in range(shards):
                name = f"task-{fmt}-{q}-{task}-{i}of{shards}"
                cell_args = ["task", "--format", fmt, "--bundle", bundle, "--task", task]
                jobs[name] = ([*cell_args, "--shard", str(i), "--shards", str(shards)], None)
                names.append(name)
        full_tasks[(fmt, q)] = names
    # the longest first, so the pool is not left waiting on one of them at the end
    order = sorted(jobs, key=lambda name: (jobs[name][1] is not None, name.startswith("torch")))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {name: pool.submit(cells.run, name, *jobs[name]) for name in order}
        measured = {name: f.result() for name, f in futures.items()}
    for (fmt, q), names in full_tasks.items():
        parts = [{"task": name.split("-")[3], **measured[name]} for name in names]
        measured[f"runtime-{fmt}-{q}-full"] = merge_tasks(parts, measured[f"runtime-{fmt}-{q}-latency"])

    results = assemble(args, formats, skipped, exports, measured)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md")
    write_plot(results, args.out / "results.png")
    print(f"wrote {args.out / 'results.md'}")
    return 0 if not any("error" in row for row in results["rows"]) else 1


# Shards per task on the full splits (easy-VQA's test split has 9,673 questions).
FULL_SHARDS = {"easy_vqa": 8, "vqa": 2, "ocr": 2, "ocr_unseen_fonts": 2}


def held_out_tasks() -> list[str]:
    from benchmarks.export.cell import _tasks

    return _tasks()


def merge_tasks(parts: list[dict[str, Any]], latency: dict[str, Any]) -> dict[str, Any]:
    """One runtime result from task cells (shards add their hits up to the report's mean) and the
    one-example cell that measured latency and memory."""
    if "error" in latency:
        return {"error": latency["error"]}
    # a task with a shard that failed or was not measured is left out, and named
    missing = sorted({p["task"] for p in parts if "error" in p})
    tasks: dict[str, dict[str, Any]] = {}
    for part in parts:
        if "error" in part or part["task"] in missing:
            continue
        task = tasks.setdefault(part["task"], {"n": 0, "hits": 0})
        task["n"] += part["n"]
        if "hits" in part:
            task["hits"] += part["hits"]
        else:
            task["primary"] = part["primary"]
    for task in tasks.values():
        if "primary" not in task:
            task["primary"] = task["hits"] / task["n"]
        task.pop("hits")
    if not tasks:
        return {"error": f"no task measured on the full splits ({', '.join(missing)})"}
    return {**latency, "tasks": tasks, "examples": "full", "missing_tasks": missing}


def examples_for(args: argparse.Namespace, fmt: str, quantization: str) -> int | None:
    """Examples per task of a cell: None (the full splits) by default or for the ``--full`` cells."""
    if f"{fmt}-{quantization}" in args.full:
        return None
    per_format = dict(item.split("=", 1) for item in args.format_examples)
    return int(per_format[fmt]) if fmt in per_format else args.examples


def assemble(
    args: argparse.Namespace,
    formats: list[str],
    skipped: dict[str, str],
    exports: dict[tuple[str, str], dict[str, Any]],
    measured: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    rows = []
    for (fmt, q), export in exports.items():
        row: dict[str, Any] = {"format": fmt, "platform": platform_for(fmt), "quantization": q}
        if "error" in export:
            rows.append({**row, "error": export["error"]})
            continue
        manifest = export["manifest"]
        validation = manifest["validation"]
        row.update(
            {
                "export_s": round(export["wall_s"], 2),
                # user + system CPU seconds of the export process and its workers: unlike the
                # wall time, barely moved by other work on the machine
                "export_cpu_s": round(export["cpu_s"], 2) if "cpu_s" in export else None,
                "export_under_target": export["wall_s"] < EXPORT_TARGET_S,
                "export_rss_peak_bytes": export["rss_peak_bytes"],
                "export_load_avg_1m": export.get("load_avg_1m"),
                "bundle_bytes": sum(f["bytes"] for f in manifest["files"]),
                "runtime": validation["runtime"],
                "executed": bool(validation["executed"]),
            }
        )
        n = examples_for(args, fmt, q)
        runtime = measured.get(f"runtime-{fmt}-{q}-{n or 'full'}", {})
        reference = measured.get(f"torch-{q}-{n or 'full'}", {})
        row["examples_per_task"] = n if n is not None else "full"
        if not validation["executed"]:
            row["reason"] = validation.get("reason")
        elif "error" in runtime or "error" in reference:
            row["error"] = runtime.get("error") or reference.get("error")
        else:
            row["tasks"] = {
                task: {
                    "n": r["n"],
                    "exported": r["primary"],
                    "pytorch": reference["tasks"][task]["primary"],
                    "equal": r["primary"] == reference["tasks"][task]["primary"],
                    "latency_ms": 1000 * runtime["latency_s"][task],
                    "pytorch_latency_ms": 1000 * runtime["pytorch_latency_s"][task],
                    "latency_ratio": runtime["latency_s"][task] / runtime["pytorch_latency_s"][task],
                }
                for task, r in runtime["tasks"].items()
            }
            if runtime.get("missing_tasks"):
                row["missing_tasks"] = runtime["missing_tasks"]
            row["rss_peak_bytes"] = runtime["rss_peak_bytes"]
            row["rss_model_bytes"] = runtime["rss_model_bytes"]
            row["pytorch_rss_peak_bytes"] = reference["rss_peak_bytes"]
            row["pytorch_rss_model_bytes"] = reference["rss_model_bytes"]
        rows.append(row)
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "versions": _versions(),
        "commit": _commit(),
        "model": args.model,
        "examples_per_task": args.examples if args.examples is not None else "full held-out splits",
        "full_splits_for": args.full if args.examples is not None else "every cell",
        "latency_examples": args.latency_examples,
        "threads": 1,
        "export_target_s": EXPORT_TARGET_S,
        "formats_measured": formats,
        "formats_skipped": skipped,
        "memory": "rss_peak_bytes: ru_maxrss of the cell's own process (interpreter and libraries "
        "included); rss_model_bytes: that peak minus the RSS after the imports, before loading",
        "rows": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
