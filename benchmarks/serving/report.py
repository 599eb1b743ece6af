"""The serving benchmark's report: results.md (targets, tables) and the PNG plots, from results.json.

Regenerate both from a saved run (``results.json`` in DIR, default: beside this file)::

    .venv/bin/python -m benchmarks.serving.report [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CONCURRENCY = (1, 8, 32)


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    s, m, http = result["summary"], result["model_only"], result["http"]
    ok = {True: "yes", False: "**NO**"}
    lines = [
        "# Serving benchmark (captioning through HTTP)",
        "",
        f"Model: `{result['options']['model']}`, quantization **{result['options']['quantization']}** "
        f"({m['info'].get('size_bytes', '?')} bytes of weights on disk). "
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, load average at start "
        f"{', '.join(f'{x:.2f}' for x in result['machine']['loadavg_at_start'])}. "
        f"Load generator: {result['machine']['wrk']} (closed loop), "
        f"{result['options']['duration']} s per run, median of {result['options']['repeats']} runs.",
        "",
    ]
    if result.get("notes"):
        lines += [f"> {note}" for note in result["notes"]] + [""]
    lines += [
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| p95 at concurrency 1 < 100 ms (aim < 30 ms) | {s['p95_c1_ms']:.2f} ms | "
        f"{ok[s['p95_c1_under_100ms']]} (< 30 ms: {ok[s['p95_c1_under_30ms']]}) |",
        f"| throughput at c=32, batching on / off >= 3x | {s['batching_speedup_c32']:.2f}x | "
        f"{ok[s['batching_speedup_at_least_3x']]} |",
        f"| serving overhead (HTTP p50 - model p50) < 5 ms | {s['serving_overhead_p50_ms']:.2f} ms | "
        f"{ok[s['serving_overhead_under_5ms']]} |",
        "",
        "## HTTP latency and throughput",
        "",
        "| arm | concurrency | req/s | p50 ms | p95 ms | p99 ms | batches formed (size bucket: count) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, per_c in http.items():
        for c, r in per_c.items():
            med = r["median"]
            batches = ", ".join(
                f"{k}: {int(v)}"
                for k, v in sorted(r["batches_by_size"].items(), key=lambda kv: (len(kv[0]), kv[0]))
                if v
            )
            lines.append(
                f"| {arm} | {c} | {med['rps']:.1f} | {med['p50_ms']:.2f} | {med['p95_ms']:.2f} | "
                f"{med['p99_ms']:.2f} | {batches} |"
            )
    b1 = m["batch1"]
    lines += [
        "",
        "## Model only (in-process, batch 1)",
        "",
        f"{m['threads']} torch thread(s), as the server uses. p50 {b1['p50_ms']:.2f} ms, "
        f"p95 {b1['p95_ms']:.2f} ms, p99 {b1['p99_ms']:.2f} ms. "
        f'Caption of the benchmark image: "{m["caption"]}".',
        "",
        "Per-image time by batch size (what batching buys): "
        + ", ".join(f"{k}: {v:.2f} ms" for k, v in m["per_image_ms_by_batch"].items()),
        "",
        "Plots: `latency.png` (percentiles by concurrency), `throughput.png`, `model_batching.png`.",
        "",
        "Reproduce: `.venv/bin/python -m benchmarks.serving.run "
        f"--model {result['options']['model']} --quantization {result['options']['quantization']}`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def plot(out: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = result["http"]
    cs = [str(c) for c in CONCURRENCY]
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, style in (("batching", "-"), ("no_batching", "--")):
        for q, color in (("p50_ms", "tab:blue"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")):
            ax.plot(
                cs,
                [http[arm][c]["median"][q] for c in cs],
                style,
                marker="o",
                color=color,
                label=f"{arm} {q[:3]}",
            )
    ax.axhline(100, color="gray", linewidth=0.8, linestyle=":", label="100 ms target")
    ax.set(
        xlabel="concurrent connections",
        ylabel="latency (ms)",
        yscale="log",
        title=f"Captioning over HTTP ({result['options']['quantization']})",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    xs = range(len(cs))
    for i, arm in enumerate(("batching", "no_batching")):
        ax.bar(
            [x + (i - 0.5) * width for x in xs], [http[arm][c]["median"]["rps"] for c in cs], width, label=arm
        )
    ax.set_xticks(list(xs), cs)
    ax.set(xlabel="concurrent connections", ylabel="requests / s", title="Throughput, batching on vs off")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)

    per = result["model_only"]["per_image_ms_by_batch"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(list(per), list(per.values()), marker="o")
    ax.set(xlabel="batch size", ylabel="ms per image", title="Model only: per-image time by batch size")
    fig.tight_layout()
    fig.savefig(out / "model_batching.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    saved = json.loads((directory / "results.json").read_text())
    write_markdown(directory / "results.md", saved)
    plot(directory, saved)
