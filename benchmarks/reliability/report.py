"""The reliability benchmark's report: results.md and results.png from results.json.

Regenerate both from a saved run (``results.json`` in DIR, default: beside this file)::

    .venv/bin/python -m benchmarks.reliability.report [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MIB = 2**20


def _verdict(problems: list[str]) -> str:
    return "**every rule held**" if not problems else "**FAILED**: " + "; ".join(problems)


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    opts, env = result["options"], result["machine"]
    lines = [
        "# Reliability benchmark: overload at 2x capacity, and a soak",
        "",
        f"Model `{opts['model']}` at **{opts['quantization']}**, served by `mobile-mm serve` with its "
        f"defaults (queue {opts['max_queue']}"
        + (f", queue wait budget {opts['max_queue_wait_s']:g} s" if "max_queue_wait_s" in opts else "")
        + f", batches of {opts['max_batch_size']}, request timeout "
        f"{opts['request_timeout_s']:g} s, canary every {opts['canary_interval_s']:g} s; auth off"
        + (f"; overrides {opts['env']}" if opts["env"] else "")
        + f"). Machine: {env['cpu']}, {env['cores']} cores; **load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}**. Load tool: {env['k6']}.",
        "",
    ]
    lines += [f"> {note}" for note in result.get("notes", [])] + ([""] if result.get("notes") else [])
    if "overload" in result:
        o = result["overload"]
        cap, over, rss = o["capacity"], o["overload"], o["rss_bytes"]
        plan = o["plan"]
        lines += [
            "## Overload",
            "",
            f"Capacity (k6 closed loop, {cap['clients']} clients, {plan['capacity_s']:g} s): "
            f"**{cap['accepted_rps']:.1f} req/s**, p99 {cap['accepted_ms']['p99']:.0f} ms. Then open loop "
            f"at **{o['offered_rps']} req/s** ({plan['factor']:g}x) for {plan['overload_s']:g} s, a new "
            f"connection per arrival, up to {o['vus']} in flight.",
            "",
            "| measure | value | rule |",
            "|---|---|---|",
            f"| answers by status | {over['statuses']} | only 200, or 429/503 |",
            f"| 429/503 without Retry-After | {over['retry_after_missing']} | 0 |",
            f"| arrivals k6 could not send (no free client) | {over['dropped_iterations']} | reported |",
            f"| accepted req/s during overload | {over['accepted_rps']:.1f} | reported |",
            f"| accepted p50 / p95 / p99 / max ms | {over['accepted_ms']['p50']:.0f} / "
            f"{over['accepted_ms']['p95']:.0f} / {over['accepted_ms']['p99']:.0f} / "
            f"{over['accepted_ms']['max']:.0f} | p99 < {o['p99_bound_ms']:.0f} ms |",
            f"| RSS before / peak / after, MiB | {rss['baseline'] / MIB:.0f} / {rss['peak'] / MIB:.0f} / "
            f"{rss['after'] / MIB:.0f} | after <= {rss['limit'] / MIB:.0f} (baseline + 10%) |",
            f"| ready afterwards | {o.get('ready_after')} | True |",
            "",
            "The p99 bound: twice (the queue of "
            f"{o['max_queue']} drained at the measured capacity + the p99 at capacity). The queue is "
            "the only place an accepted request waits beyond its own batch; the factor two leaves room "
            "for the load generator and the refused requests sharing the CPU.",
            "",
            f"Verdict: {_verdict(o['problems'])}.",
            "",
        ]
    if "soak" in result:
        s = result["soak"]
        rss = s["rss_bytes"]
        lines += [
            "## Soak",
            "",
            f"{s['requests']:,} requests after {s['warmup']:,} warm-up, {s['vus']} clients (k6), every task "
            f"and a quarter bad requests: answers {s['run']['statuses']} (expected "
            f"{s['expected_refusals']:,} refusals), accepted p99 {s['run']['accepted_ms']['p99']:.0f} ms, "
            f"{s['run']['accepted_rps']:.1f} req/s.",
            "",
            f"Resident memory: **{rss['baseline'] / MIB:.1f} MiB after warm-up, {rss['final'] / MIB:.1f} MiB "
            f"at the end: {s['growth']:+.2%}** (peak {rss['peak'] / MIB:.1f} MiB); target < "
            f"{s['max_growth']:.0%}.",
            "",
            f"Verdict: {_verdict(s['problems'])}.",
            "",
        ]
    lines += [
        "Plot: `results.png` (RSS over the overload and over the soak).",
        "",
        f"Reproduce: `.venv/bin/python -m benchmarks.reliability.run --model {opts['model']} "
        f"--quantization {opts['quantization']}`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("overload", "soak") if p in result]
    fig, axes = plt.subplots(1, max(1, len(parts)), figsize=(6 * max(1, len(parts)), 3.8), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=False):
        samples = result[part]["rss_samples"]
        ax.plot([t for t, _ in samples], [b / MIB for _, b in samples], marker=".", linewidth=1)
        rss = result[part]["rss_bytes"]
        ax.axhline(rss["baseline"] / MIB, color="gray", linestyle=":", label="baseline")
        if part == "soak":
            limit = rss["baseline"] * (1 + result["soak"]["max_growth"]) / MIB
            title = f"Soak: {result['soak']['requests']:,} requests"
        else:
            limit = rss["limit"] / MIB
            title = f"Overload at {result['overload']['offered_rps']} req/s"
        ax.axhline(limit, color="red", linestyle="--", label="limit")
        ax.set(xlabel="seconds", ylabel="server RSS (MiB)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    saved = json.loads((directory / "results.json").read_text())
    write_markdown(directory / "results.md", saved)
    plot(directory / "results.png", saved)
