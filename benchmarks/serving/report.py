"""The serving benchmark's report: the summary (targets and ratios against each peer), results.md
and the PNG plots, all from results.json.

Regenerate the report from a saved run (``results.json`` in DIR, default: beside this file)::

    .venv/bin/python -m benchmarks.serving.report [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.serving import report_frameworks

CONCURRENCY = (1, 8, 32)
QUANTILES = ("p50_ms", "p95_ms", "p99_ms")
MIB = 1024 * 1024


def _med(per_precision: dict[str, Any], server: str, task: str, c: int) -> dict[str, float]:
    median: dict[str, float] = per_precision["servers"][server]["tasks"][task][str(c)]["median"]
    return median


def _div(a: float, b: float) -> float | None:
    """a / b, or None when b is 0 (a run that completed no request: it shows as n/a)."""
    return a / b if b else None


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def ratios(per_precision: dict[str, Any], peer: str, tasks: list[str]) -> dict[str, Any]:
    """ours / peer for each task and concurrency: throughput (> 1 = ours serves more) and the
    latency percentiles (< 1 = ours answers sooner)."""
    out: dict[str, Any] = {}
    for task in tasks:
        out[task] = {}
        for c in CONCURRENCY:
            ours, theirs = _med(per_precision, "ours", task, c), _med(per_precision, peer, task, c)
            out[task][str(c)] = {
                "rps": _div(ours["rps"], theirs["rps"]),
                **{q[:3]: _div(ours[q], theirs[q]) for q in QUANTILES},
            }
    return out


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    tasks: list[str] = result["options"]["tasks"]
    frameworks: list[str] = result["options"].get("framework_peers", [])
    main_task = "captioning" if "captioning" in tasks else tasks[0]
    summary: dict[str, Any] = {}
    for q, per in result["precisions"].items():
        ours_c1 = _med(per, "ours", main_task, 1)
        speedup = (
            _med(per, "ours", main_task, 32)["rps"] / _med(per, "ours_no_batching", main_task, 32)["rps"]
        )
        overhead = (
            ours_c1["p50_ms"] - per["model_only"]["batch1"]["p50_ms"] if main_task == "captioning" else None
        )
        load_s = per["servers"]["ours"]["model_load_duration_seconds"]
        summary[q] = {
            "task": main_task,
            "p95_c1_ms": ours_c1["p95_ms"],
            "p95_c1_under_100ms": ours_c1["p95_ms"] < 100,
            "p95_c1_under_30ms": ours_c1["p95_ms"] < 30,
            "batching_speedup_c32": speedup,
            "batching_speedup_at_least_3x": None if speedup is None else speedup >= 3,
            "serving_overhead_p50_ms": overhead,
            "serving_overhead_under_5ms": None if overhead is None else overhead < 5,
            "model_load_s": load_s,
            "model_load_under_10s": None if load_s is None else load_s < 10,
            "vs_peers": {peer: ratios(per, peer, tasks) for peer in result["options"]["peers"]},
        }
        if frameworks:
            summary[q]["vs_frameworks"] = {
                task: report_frameworks.versus_frameworks(per, frameworks, task) for task in tasks
            }
            for key, server in report_frameworks.VARIANTS[1:]:  # opt-in servers of ours, if run
                if server in per["servers"]:
                    summary[q][key] = {
                        task: report_frameworks.versus_frameworks(per, frameworks, task, ours=server)
                        for task in tasks
                    }
        if "correctness" in per:
            summary[q]["answers_identical"] = per["correctness"]["all_identical"]
    return summary


def _ok(value: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "n/a"}[value]


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    opts, env = result["options"], result["machine"]
    lines = [
        "# Serving benchmark: ours against its peers, one run",
        "",
        f"Model `{opts['model']}` at {', '.join(opts['precisions'])}; tasks {', '.join(opts['tasks'])}. "
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['memory_bytes'] / 2**30:.0f} GiB; "
        f"**load average at start {', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}**. "
        f"Load generator: {env['wrk']} (closed loop), {opts['duration']} s per run, median of "
        f"{opts['repeats']} runs. Servers, each cold-started per precision: `ours` (batching: "
        "max 16, 5 ms), `ours_no_batching` (max 1), "
        + ", ".join(f"`{p}` ({d})" for p, d in opts["peers"].items())
        + ".",
        "",
    ]
    lines += [f"> {note}" for note in result.get("notes", [])] + ([""] if result.get("notes") else [])
    lines += [
        "## Targets",
        "",
        "| precision | target | measured | met |",
        "|---|---|---|---|",
    ]
    for q, s in result["summary"].items():
        overhead = s["serving_overhead_p50_ms"]
        load = s["model_load_s"]
        lines += [
            f"| {q} | p95 at c=1 < 100 ms (aim < 30), {s['task']} | {s['p95_c1_ms']:.2f} ms | "
            f"{_ok(s['p95_c1_under_100ms'])} (< 30: {_ok(s['p95_c1_under_30ms'])}) |",
            f"| {q} | throughput at c=32, batching on / off >= 3x | "
            f"{_fmt(s['batching_speedup_c32'], '.2f', 'x')} | "
            f"{_ok(s['batching_speedup_at_least_3x'])} |",
            f"| {q} | serving overhead (HTTP p50 - model p50) < 5 ms | "
            f"{'n/a' if overhead is None else f'{overhead:.2f} ms'} | "
            f"{_ok(s['serving_overhead_under_5ms'])} |",
            f"| {q} | model load (`model_load_duration_seconds`) < 10 s | "
            f"{'n/a' if load is None else f'{load:.2f} s'} | {_ok(s['model_load_under_10s'])} |",
        ]
    frameworks = report_frameworks.markdown(result)
    lines += ["", *frameworks] if frameworks else []
    for peer in opts["peers"]:
        lines += [
            "",
            f"## Ours / `{peer}` (same run; throughput > 1 and latency < 1 favour ours)",
            "",
            "| precision | task | c | req/s ours | req/s peer | throughput ratio | p50 ratio | p95 ratio "
            "| p99 ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for q, s in result["summary"].items():
            per = result["precisions"][q]
            for task, by_c in s["vs_peers"][peer].items():
                for c, r in by_c.items():
                    ours, theirs = _med(per, "ours", task, int(c)), _med(per, peer, task, int(c))
                    lines.append(
                        f"| {q} | {task} | {c} | {ours['rps']:.1f} | {theirs['rps']:.1f} | "
                        f"**{_fmt(r['rps'], '.2f', 'x')}** | "
                        + " | ".join(_fmt(r[q], ".2f") for q in ("p50", "p95", "p99"))
                        + " |"
                    )
    lines += [
        "",
        "## Start-up and resident memory",
        "",
        "Spawn to `/ready` 200 (imports, load, warm-up); RSS of the server process when ready and after "
        "its load runs. Ours serving a quantized model also holds the fp32 reference of the canary/shadow.",
        "",
        "| precision | server | spawn to ready s | model load s | RSS ready MiB | RSS after load MiB |",
        "|---|---|---|---|---|---|",
    ]
    for q, per in result["precisions"].items():
        for name, srv in per["servers"].items():
            load = srv["model_load_duration_seconds"]
            lines.append(
                f"| {q} | {name} | {srv['ready_s']:.2f} | {'-' if load is None else f'{load:.2f}'} | "
                f"{srv['rss_bytes']['ready'] / MIB:.0f} | {srv['rss_bytes']['after_load'] / MIB:.0f} |"
            )
    lines += [
        "",
        "## All HTTP runs (medians)",
        "",
        "| precision | server | task | c | req/s | p50 ms | p95 ms | p99 ms | batches (size: count) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q, per in result["precisions"].items():
        for name, srv in per["servers"].items():
            for task, by_c in srv["tasks"].items():
                for c, r in by_c.items():
                    med = r["median"]
                    batches = ", ".join(
                        f"{k}: {int(v)}"
                        for k, v in sorted(r.get("batches_by_size", {}).items(), key=lambda kv: int(kv[0]))
                        if v
                    )
                    lines.append(
                        f"| {q} | {name} | {task} | {c} | {med['rps']:.1f} | {med['p50_ms']:.2f} | "
                        f"{med['p95_ms']:.2f} | {med['p99_ms']:.2f} | {batches} |"
                    )
    lines += ["", "## Model only (in-process, batch 1, captioning)", ""]
    for q, per in result["precisions"].items():
        m = per["model_only"]
        b1 = m["batch1"]
        lines.append(
            f"- {q}: {m['threads']} torch thread(s); `from_pretrained` {m['from_pretrained_s']:.2f} s; "
            f"p50 {b1['p50_ms']:.2f} ms, p95 {b1['p95_ms']:.2f} ms, p99 {b1['p99_ms']:.2f} ms; "
            f'caption "{m["caption"]}"; per image by batch size: '
            + ", ".join(f"{k}: {v:.2f} ms" for k, v in m["per_image_ms_by_batch"].items())
        )
    lines += [
        "",
        "Plots: `latency.png` (p50/p99 by concurrency, ours vs each peer), `throughput.png`, "
        "`model_batching.png`.",
        "",
        f"Reproduce: `.venv/bin/python -m benchmarks.serving.run --model {opts['model']} "
        f"--precisions {','.join(opts['precisions'])}`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def plot(out: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = result["options"]
    names = ["ours", "ours_no_batching", *opts["peers"]]
    precisions, tasks = opts["precisions"], opts["tasks"]
    cs = [str(c) for c in CONCURRENCY]
    fig, axes = plt.subplots(
        len(precisions), len(tasks), figsize=(4 * len(tasks), 3.2 * len(precisions)), squeeze=False
    )
    for i, q in enumerate(precisions):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            for k, name in enumerate(names):
                tasks_of = result["precisions"][q]["servers"][name]["tasks"][task]
                for quantile, style in (("p50_ms", "-"), ("p99_ms", ":")):
                    ax.plot(
                        cs,
                        [tasks_of[c]["median"][quantile] for c in cs],
                        style,
                        marker="o",
                        color=f"C{k}",
                        label=f"{name} {quantile[:3]}",
                    )
            ax.set(title=f"{task}, {q}", xlabel="connections", ylabel="latency (ms)", yscale="log")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(precisions), figsize=(5 * len(precisions), 3.6), squeeze=False)
    width = 0.8 / len(names)
    for i, q in enumerate(precisions):
        ax = axes[0][i]
        for k, name in enumerate(names):
            rps = [result["precisions"][q]["servers"][name]["tasks"][t]["32"]["median"]["rps"] for t in tasks]
            ax.bar(
                [x + (k - (len(names) - 1) / 2) * width for x in range(len(tasks))], rps, width, label=name
            )
        ax.set_xticks(list(range(len(tasks))), tasks)
        ax.set(ylabel="requests / s at c=32", title=f"Throughput, {q}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for q in precisions:
        per = result["precisions"][q]["model_only"]["per_image_ms_by_batch"]
        ax.plot(list(per), list(per.values()), marker="o", label=q)
    ax.set(xlabel="batch size", ylabel="ms per image", title="Model only: per-image time by batch size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "model_batching.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    saved = json.loads((directory / "results.json").read_text())
    write_markdown(directory / "results.md", saved)
    plot(directory, saved)
