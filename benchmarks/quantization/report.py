"""Markdown table and plot of a quantization benchmark run (results.json -> results.md, results.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the targets: maximum accuracy loss over tasks, per precision
TARGETS = {"int8": 0.005, "int4": 0.01, "int2": 0.05}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}%"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    cfg, env = results["config"], results["environment"]
    tasks = list(results["fp32"]["tasks"])
    fp32_size = results["fp32"]["size_bytes"]
    lines = [
        "# Quantization benchmark",
        "",
        f"Run {results['created']} in {results['duration_s']} s on {env['cpu_count']} CPU cores "
        f"({env['torch_threads']} torch thread(s), load average at the end {env['load_average'][0]:.1f}); "
        f"versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        f"Every row is scored on the same first {cfg['eval_limit_per_task']} held-out examples of each task "
        f"(retrieval: a pool of that size). Accuracy loss = (fp32 − quantized) / fp32 of the task's primary "
        "metric; positive is worse. Low-bit bits/weight counts codes, scales and zero points as each "
        "library stores them.",
        "",
        "## Accuracy loss per task",
        "",
        "| row | bits | group | low-bit bits/weight | size | " + " | ".join(tasks) + " | max loss |",
        "|---|---|---|---|---|" + "---|" * len(tasks) + "---|",
    ]
    for r in results["rows"]:
        size = (
            ""
            if r["size_bytes"] is None
            else f"{r['size_bytes'] / 1e6:.3f} MB ({r['size_bytes'] / fp32_size:.3f}x)"
        )
        cells = [
            f"{r['tasks'][t]['primary']:.4f} ({_pct(r['tasks'][t]['accuracy_loss'])})"
            if r["name"] != "fp32"
            else f"{r['tasks'][t]['primary']:.4f}"
            for t in tasks
        ]
        bpw = "" if r["low_bit_bits_per_weight"] is None else f"{r['low_bit_bits_per_weight']:.3f}"
        lines.append(
            f"| {r['name']} | {r['bits']} | {r['group_size'] or '-'} | {bpw} | {size} | "
            + " | ".join(cells)
            + f" | {_pct(r['max_accuracy_loss']) if r['name'] != 'fp32' else ''} |"
        )
    lines += [
        "",
        "Notes: " + "; ".join(f"**{r['name']}**: {r['note']}" for r in results["rows"]),
        "",
        "## CPU latency (median ms; ratio to fp32 in brackets)",
        "",
    ]
    lat = results["latency_ms"]
    work = [k for k in lat["fp32"] if not k.endswith("_vs_fp32")]
    memory = results.get("memory_bytes", {})
    lines += [
        "Decoding workloads stop at each model's own end token, so `*_per_token` divides by the tokens "
        "each model generated. Weights in memory = the parameters and buffers the network holds (packed "
        "codes, scales, zero points, float norms and biases; plus the float copies when the cache is on).",
        "",
        "| row | weights in memory | " + " | ".join(work) + " |",
        "|---|---|" + "---|" * len(work),
    ]
    for name, v in lat.items():
        mem = f"{memory[name] / 1e6:.2f} MB" if name in memory else ""
        timings = " | ".join(f"{v[w]:.1f} ({v[w + '_vs_fp32']:.2f}x)" for w in work)
        lines.append(f"| {name} | {mem} | {timings} |")
    lines += ["", "## Targets", "", "| check | measured | pass |", "|---|---|---|"]
    for name, c in results["checks"].items():
        measured = f"ours {_pct(c['ours'])} vs peer {_pct(c['peer'])}" if "peer" in c else f"{c['value']:.4f}"
        lines.append(f"| {name} | {measured} | {'yes' if c['pass'] else 'NO'} |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(results["fp32"]["tasks"])
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5), gridspec_kw={"width_ratios": [3, 1.3, 1.6]})
    for ax, bits in ((axes[0], 2),):
        rows = [r for r in results["rows"] if r["bits"] == bits]
        width = 0.8 / max(1, len(rows))
        x = np.arange(len(tasks))
        for i, r in enumerate(rows):
            vals = [100 * (r["tasks"][t]["accuracy_loss"] or 0.0) for t in tasks]
            ax.bar(x + i * width, vals, width, label=r["name"])
        ax.axhline(5, color="red", linestyle="--", linewidth=1, label="alert threshold (5%)")
        ax.set_xticks(x + width * (len(rows) - 1) / 2, tasks, rotation=15)
        ax.set_ylabel("accuracy loss vs fp32 (%)")
        ax.set_title(f"{bits}-bit: accuracy loss per task (lower is better)")
        ax.legend(fontsize=7)
    rows = results["rows"]
    axes[1].barh(
        [r["name"] for r in rows],
        [100 * r["max_accuracy_loss"] for r in rows],
        color=["tab:green" if r["family"].startswith("ours") else "tab:gray" for r in rows],
    )
    axes[1].set_xlabel("max loss over tasks (%)")
    axes[1].invert_yaxis()
    axes[1].tick_params(axis="y", labelsize=7)
    lat = results["latency_ms"]
    names = list(lat)
    work = [k for k in lat["fp32"] if not k.endswith("_vs_fp32")]
    width = 0.8 / len(work)
    for i, w in enumerate(work):
        axes[2].bar(
            np.arange(len(names)) + i * width, [lat[n][w + "_vs_fp32"] for n in names], width, label=w
        )
    axes[2].axhline(1, color="black", linewidth=0.8)
    axes[2].set_xticks(
        np.arange(len(names)) + width * (len(work) - 1) / 2, names, rotation=30, ha="right", fontsize=7
    )
    axes[2].set_ylabel("CPU latency / fp32")
    axes[2].legend(fontsize=7)
    axes[2].set_title("latency relative to fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
