"""results.md and results.png of the export benchmark, from its results.json (see run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIB = 2**20


def _why(error: str) -> str:
    return error if error.startswith("not measured") else f"failed: {error}"


def _fmt_score(task: str, value: float) -> str:
    return f"{value:.3f}" if task == "captioning" else f"{value:.4f}"


def summary_table(results: dict[str, Any]) -> list[str]:
    """Formats x precisions: size, export time, accuracy (worst task vs PyTorch), latency."""
    lines = [
        "| format | platform | precision | bundle | export (validation incl.) "
        "| accuracy vs PyTorch (tasks equal) "
        "| batch-1 latency vs PyTorch eager (median ratio over tasks) | peak RSS (runtime / PyTorch) |",
        "|---|---|---|---:|---:|---|---|---|",
    ]
    for row in results["rows"]:
        head = f"| {row['format']} | {row['platform']} | {row['quantization']} "
        if "export_s" not in row:
            lines.append(head + f"| - | {_why(row['error'])} | | | |")
            continue
        size = f"{row['bundle_bytes'] / MIB:.2f} MiB"
        target = "" if row["export_under_target"] else " (over the 60 s target)"
        load = row.get("export_load_avg_1m")
        export = f"{row['export_s']:.1f} s{target}"
        if row.get("export_cpu_s") is not None:
            export += f", {row['export_cpu_s']:.0f} s CPU"
        export += f" (load {load[0]:.1f})" if load else ""
        if "tasks" in row:
            tasks = row["tasks"]
            equal = sum(t["equal"] for t in tasks.values())
            worst = max(tasks.items(), key=lambda kv: abs(kv[1]["exported"] - kv[1]["pytorch"]))
            n = row.get("examples_per_task", "full")
            accuracy = f"{equal}/{len(tasks)} equal ({'full splits' if n == 'full' else f'{n} per task'})"
            if equal < len(tasks):
                name, t = worst
                gap = f"{_fmt_score(name, t['exported'])} vs {_fmt_score(name, t['pytorch'])}"
                accuracy += f"; largest gap {name} {gap}"
            if row.get("missing_tasks"):
                accuracy += f"; not measured in time: {', '.join(row['missing_tasks'])}"
            ratios = sorted(t["latency_ratio"] for t in tasks.values())
            latency = f"{ratios[len(ratios) // 2]:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}x)"
            memory = f"{row['rss_peak_bytes'] / MIB:.0f} / {row['pytorch_rss_peak_bytes'] / MIB:.0f} MiB"
        elif not row.get("executed", True):
            accuracy = f"not executed here: {row.get('reason', '')}"
            latency = memory = "-"
        else:
            accuracy = _why(row.get("error", ""))
            latency = memory = "-"
        lines.append(head + f"| {size} | {export} | {accuracy} | {latency} | {memory} |")
    return lines


def task_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for row in results["rows"]:
        if "tasks" not in row:
            continue
        lines += [
            f"### {row['format']} {row['quantization']} ({row['runtime']}; "
            f"{row.get('examples_per_task', 'full')} examples per task)",
            "",
            "| task | n | exported | PyTorch | equal | latency ms | PyTorch ms | ratio |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for task, t in row["tasks"].items():
            lines.append(
                f"| {task} | {t['n']} | {_fmt_score(task, t['exported'])} | {_fmt_score(task, t['pytorch'])} "
                f"| {'yes' if t['equal'] else 'no'} | {t['latency_ms']:.2f} | {t['pytorch_latency_ms']:.2f} "
                f"| {t['latency_ratio']:.2f} |"
            )
        lines += [
            "",
            f"Memory: peak RSS {row['rss_peak_bytes'] / MIB:.0f} MiB in {row['runtime']} "
            f"({row['rss_model_bytes'] / MIB:.0f} MiB above the process after its imports); PyTorch eager "
            f"{row['pytorch_rss_peak_bytes'] / MIB:.0f} MiB "
            f"({row['pytorch_rss_model_bytes'] / MIB:.0f} MiB). "
            f"Export process peak RSS {row['export_rss_peak_bytes'] / MIB:.0f} MiB.",
            "",
        ]
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    machine = results["machine"]
    skipped = results["formats_skipped"]
    lines = [
        "# Export benchmark",
        "",
        f"Commit {results['commit']}; {machine['cpu_count']} CPU cores ({machine['platform']}), load average "
        f"at the end {', '.join(f'{x:.1f}' for x in machine['load_avg_at_end'])}; torch and ONNX Runtime on "
        f"{results['threads']} thread. Accuracy on {results['examples_per_task']} (examples per task; the "
        f"full held-out splits for {results['full_splits_for']}), the "
        "exported bundle driven by its own description files (decode.BundleModel) against the PyTorch "
        "model at the same precision on the same examples. Latency: mean of "
        f"{results['latency_examples']} batch-1 calls per task after one warm-up call. "
        f"Memory: {results['memory']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + ".",
        "",
        *summary_table(results),
        "",
    ]
    if skipped:
        lines += ["Not measured (toolchain missing here):", ""]
        lines += [f"- {fmt}: {why}" for fmt, why in skipped.items()]
        lines.append("")
    lines += ["## Per task", "", *task_tables(results)]
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in results["rows"] if "export_s" in r]
    labels = [f"{r['format']}\n{r['quantization']}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    ax.bar(labels, [r["export_s"] for r in rows], color="tab:blue")
    ax.axhline(results["export_target_s"], color="tab:red", linestyle="--", label="target 60 s")
    ax.set_ylabel("seconds")
    ax.set_title("Export time, validation included")
    ax.legend()
    ax = axes[1]
    ax.bar(labels, [r["bundle_bytes"] / MIB for r in rows], color="tab:green")
    ax.set_ylabel("MiB")
    ax.set_title("Bundle size")
    ax = axes[2]
    executed = [r for r in rows if "tasks" in r]
    if executed:
        tasks = list(executed[0]["tasks"])
        width = 0.8 / max(1, len(executed))
        x = np.arange(len(tasks))
        for i, r in enumerate(executed):
            ax.bar(
                x + i * width,
                [r["tasks"][t]["latency_ratio"] for t in tasks],
                width,
                label=f"{r['format']} {r['quantization']}",
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x + width * (len(executed) - 1) / 2, tasks, rotation=20)
        ax.set_ylabel("runtime / PyTorch eager")
        ax.set_title("Batch-1 latency vs PyTorch (lower is faster)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_TASKS = ("captioning", "vqa", "ocr")


def readme_table(results: dict[str, Any]) -> list[str]:
    """The README's formats x precisions table (size, accuracy, latency, export time)."""
    lines = [
        "| format (runtime) | precision | bundle | accuracy in the runtime vs PyTorch, same precision "
        "| batch-1 latency, ms: captioning / VQA / OCR (x PyTorch eager) | export, validation incl. |",
        "|---|---|---:|---|---|---:|",
    ]
    for row in results["rows"]:
        head = f"| {row['format']} ({row.get('runtime', '-')}) | {row['quantization']} "
        if "export_s" not in row:
            lines.append(head + f"| - | {_why(row['error'])} | - | - |")
            continue
        size = f"{row['bundle_bytes'] / MIB:.2f} MiB"
        if "tasks" in row:
            tasks = row["tasks"]
            equal = sum(t["equal"] for t in tasks.values())
            n = row.get("examples_per_task", "full")
            accuracy = (
                f"{equal}/{len(tasks)} tasks equal ({'full splits' if n == 'full' else f'{n} per task'})"
            )
            unequal = [(k, t) for k, t in tasks.items() if not t["equal"]]
            if unequal:
                k, t = max(unequal, key=lambda kv: abs(kv[1]["exported"] - kv[1]["pytorch"]))
                accuracy += f"; {k} {_fmt_score(k, t['exported'])} vs {_fmt_score(k, t['pytorch'])}"
            if row.get("missing_tasks"):
                accuracy += f"; not measured in time: {', '.join(row['missing_tasks'])}"
            latency = " / ".join(
                f"{tasks[k]['latency_ms']:.1f} ({tasks[k]['latency_ratio']:.2f}x)"
                for k in README_TASKS
                if k in tasks
            )
        elif not row.get("executed", True):
            accuracy, latency = "not executed on Linux (structure and weight sizes checked)", "-"
        else:
            accuracy, latency = _why(row.get("error", "")), "-"
        cpu = f" ({row['export_cpu_s']:.0f} s CPU)" if row.get("export_cpu_s") is not None else ""
        lines.append(head + f"| {size} | {accuracy} | {latency} | {row['export_s']:.1f} s{cpu} |")
    return lines
