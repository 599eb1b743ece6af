"""The telemetry benchmark's report: results.md (tables with the verdict) and results.png (latency CDFs).

Example::

    write_markdown(result, Path("results.md"))
    plot(result, Path("results.png"))     # False when matplotlib is not installed
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pct(x: float) -> str:
    return f"{100 * x:+.2f} %"


def _interval(ci: Any) -> str:
    return f"{_pct(ci[0])} to {_pct(ci[1])}" if ci else "n/a"


def _table(section: dict[str, Any], extra_header: str, extra: Any, extra_align: str = "---:") -> list[str]:
    lines = [
        f"| task | p50 off (ms) | p50 on (ms) | p50 overhead | {extra_header} "
        "| p99 off (ms) | p99 on (ms) | < 3 % |",
        f"|---|---:|---:|---:|{extra_align}|---:|---:|---|",
    ]
    for task, r in section["tasks"].items():
        cells = [
            task,
            f"{r['off']['p50_ms']:.2f}",
            f"{r['on']['p50_ms']:.2f}",
            _pct(r["p50_overhead"]),
            extra(r),
            f"{r['off']['p99_ms']:.2f}",
            f"{r['on']['p99_ms']:.2f}",
            "yes" if r["pass"] else "NO",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(result: dict[str, Any], path: Path) -> None:
    env = result["environment"]
    load = ", ".join(f"{x:.2f}" for x in env["load_average_at_start"])
    inproc = result["inprocess"]
    lines = [
        "# Telemetry overhead",
        "",
        f"`POST /inference`, sequential requests; model {env['model']['name']} {env['model']['version']} "
        f"(`{env['model_dir']}`); {env['cpu_count']} CPUs, load average at start {load}; {env['date']}. "
        "On: middleware, spans at 100 % sampling exported over OTLP/HTTP, JSON logs at INFO, /metrics "
        "scraped every second. Off: none of these. See `run.py` for the method.",
        "",
        f"## In-process, the verdict ({inproc['blocks']} alternating blocks x {inproc['requests_per_block']} "
        "requests per arm and task, both arms in one process)",
        "",
        *_table(
            inproc,
            "95 % interval (blocks resampled) | median block difference (ms)",
            lambda r: f"{_interval(r.get('p50_overhead_ci95'))} | {r['median_block_difference_ms']:+.3f}",
            extra_align="---:|---:",
        ),
        "",
        f"Evidence that telemetry was on: {inproc['evidence']['spans']} spans reached the OTLP receiver, "
        f"/metrics was scraped {inproc['evidence']['scrapes']} times.",
        "",
        "Latency ends when the last byte of the response is handed to the server, as a client sees it. "
        "The middleware's metrics, span end and access line run after that; counted until the app "
        "returns, the p50 overhead is "
        + ", ".join(
            f"{task} {_pct(r['busy_p50_overhead'])}"
            for task, r in inproc["tasks"].items()
            if "busy_p50_overhead" in r
        )
        + ".",
    ]
    http = result.get("http")
    if http is not None:
        evidence = http["evidence"]
        lines += [
            "",
            f"## Over HTTP ({http['sessions']} sessions of two fresh `mobile-mm serve` processes x "
            f"{http['rounds']} rounds x {http['requests_per_round']} requests per arm and task)",
            "",
            *_table(
                http,
                "overhead per session",
                lambda r: " ".join(f"{100 * x:+.1f} %" for x in r["session_overheads"]),
            ),
            "",
            f"Evidence: {evidence['spans']} spans received, {evidence['log_lines_on']} JSON log lines "
            f"written by the on arm (off: {evidence['log_lines_off']}), Prometheus scraped the on arm "
            f"{evidence['scrapes']:.0f} times. Identical processes differ by a few percent on their own "
            "here, which the per-session spread shows.",
        ]
    micro = result.get("micro")
    if micro is not None:
        shares = ", ".join(f"{t} {_pct(v)}" for t, v in micro["share_of_p50"].items())
        lines += [
            "",
            f"## The telemetry path alone ({micro['blocks']} blocks x {micro['requests_per_block']} "
            "requests, no model)",
            "",
            f"{micro['median_us']['off']:.0f} µs off, {micro['median_us']['on']:.0f} µs on: telemetry adds "
            f"{micro['median_diff_us']:.0f} µs per request (median of per-block differences), "
            f"{micro['spans_per_request']:.1f} spans exported per request; as a share of the in-process "
            f"p50 above: {shares}.",
        ]
    lines += ["", "Reproduce: `.venv/bin/python -m benchmarks.telemetry.run` (see the module docstring)."]
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    section = result["inprocess"]
    tasks = list(section["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        samples = section["samples_ms"][task]
        for arm, color in (("off", "tab:blue"), ("on", "tab:orange")):
            values = sorted(samples[arm])
            ax.plot(
                values, [i / len(values) for i in range(len(values))], color=color, label=f"telemetry {arm}"
            )
        r = section["tasks"][task]
        ax.set_title(f"{task}: p50 overhead {_pct(r['p50_overhead'])}")
        ax.set_xlabel("latency (ms, in-process)")
        ax.set_ylabel("fraction of requests")
        ax.axhline(0.5, color="grey", linewidth=0.5)
        ax.set_xlim(0, max(section["tasks"][task]["on"]["p99_ms"], section["tasks"][task]["off"]["p99_ms"]))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
