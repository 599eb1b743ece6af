"""What the live-quality work (canary, shadow comparison) costs serving: an A/B in one run.

The real service (``mobile-mm serve``, the int2 model, so the shadow replays through the fp32
reference) under ``wrk`` at concurrency 1, captioning, with the live-quality work

* **off**: ``MOBILE_MM_CANARY_INTERVAL_S=0``, ``MOBILE_MM_SHADOW_SAMPLE_RATE=0``;
* **defaults**: the shipped defaults (canary at start-up and every 300 s, 1% of requests shadowed);
* **busy** (for the record, not the target): a canary every 15 s and 20% of requests shadowed.

Arms alternate (off, defaults, busy, then defaults, off, ...; busy once) so a machine whose
load drifts during the run penalises neither arm; each run is a fresh server, measured in steady
state: after its start-up canary run finished (the time it took is recorded), 3 s of warm-up
traffic, then ``--duration`` s. After each run
the server's own counters say what the background work did meanwhile (canary runs, urgent
slices, shadow comparisons and drops). The target (issue 14): p95 at c=1 with the defaults
within 3% of off (median over the repeats).

Usage::

    nice -n 10 .venv/bin/python -m benchmarks.quality_overhead.run --duration 20 --repeats 3

Writes results.json, results.md and results.png beside this file (or under --out).
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from benchmarks.serving.run import Options, _image_png, machine, run_wrk, start_server
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ARMS = {
    "off": {"MOBILE_MM_CANARY_INTERVAL_S": "0", "MOBILE_MM_SHADOW_SAMPLE_RATE": "0"},
    "defaults": {},
    "busy": {"MOBILE_MM_CANARY_INTERVAL_S": "15", "MOBILE_MM_SHADOW_SAMPLE_RATE": "0.2"},
}
COUNTERS = {
    "canary_runs": ("model_canary_runs_total", {"status": "success"}),
    "shadow_agree": ("quantization_shadow_comparisons_total", {"result": "agree"}),
    "shadow_disagree": ("quantization_shadow_comparisons_total", {"result": "disagree"}),
    "shadow_dropped": ("quantization_shadow_comparisons_total", {"result": "dropped"}),
    "requests": ("model_inference_requests_total", {"status": "success"}),
}


def counters(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    out = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key, (name, labels) in COUNTERS.items():
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    out[key] += sample.value
    return out


def one_run(opts: Options, arm: str, body_file: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        proc, url = start_server(opts, ARMS[arm], Path(data_dir))
        try:
            started = time.monotonic()
            if ARMS[arm].get("MOBILE_MM_CANARY_INTERVAL_S") != "0":  # steady state: after the start-up run
                while counters(url)["canary_runs"] < 1 and time.monotonic() - started < 300:
                    time.sleep(0.5)
            startup_canary_s = time.monotonic() - started
            run_wrk(url, 1, 3, body_file)  # warm-up
            before = counters(url)
            measured = run_wrk(url, 1, opts.duration, body_file)
            after = counters(url)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    measured["startup_canary_wait_s"] = startup_canary_s
    measured["background"] = {k: after[k] - before[k] for k in after}
    measured["background"]["canary_runs_total"] = after["canary_runs"]
    return measured


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    median = {
        arm: {k: statistics.median(r[k] for r in rs) for k in ("p50_ms", "p95_ms", "rps")}
        for arm, rs in runs.items()
    }
    off, on = median["off"]["p95_ms"], median["defaults"]["p95_ms"]
    change = (on - off) / off
    # each round ran off and defaults back to back: their ratio is less exposed to load drift
    paired = [d["p95_ms"] / o["p95_ms"] - 1 for o, d in zip(runs["off"], runs["defaults"], strict=True)]
    spread = {arm: (min(r["p95_ms"] for r in rs), max(r["p95_ms"] for r in rs)) for arm, rs in runs.items()}
    return {
        "median": median,
        "p95_c1_change_defaults_vs_off": change,
        "within_3_percent": change <= 0.03,
        "p95_c1_change_per_round": paired,
        "p95_c1_change_per_round_median": statistics.median(paired),
        "p95_range_ms": spread,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="int2")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    opts = Options(args.model, args.quantization, args.duration, args.repeats, 0, None, args.out)
    body = {"image": "data:image/png;base64," + base64.b64encode(_image_png()).decode(), "task": "captioning"}
    env = machine()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(body, f)
        body_file = Path(f.name)
    try:
        for i in range(opts.repeats):
            order = ["off", "defaults"] if i % 2 == 0 else ["defaults", "off"]
            for arm in [*order, "busy"] if i == 0 else order:  # busy: once, for the record
                r = one_run(opts, arm, body_file)
                runs[arm].append(r)
                print(
                    f"{arm:9s} run {i + 1}: p50={r['p50_ms']:.2f} ms p95={r['p95_ms']:.2f} ms "
                    f"rps={r['rps']:.1f} background={r['background']}",
                    flush=True,
                )
    finally:
        body_file.unlink()
    result = {
        "options": {
            "model": opts.model,
            "quantization": opts.quantization,
            "duration": opts.duration,
            "repeats": opts.repeats,
            "concurrency": 1,
            "arms": ARMS,
        },
        "machine": env,
        "notes": args.note,
        "runs": runs,
        "summary": summarize(runs),
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(opts.out, result)
    print(json.dumps(result["summary"], indent=2))
    return result


def write_report(out: Path, result: dict[str, Any]) -> None:
    s = result["summary"]
    m = result["machine"]
    lines = [
        "# Live-quality overhead (canary + shadow) on serving",
        "",
        f"`mobile-mm serve` with the {result['options']['quantization']} model, captioning through HTTP, "
        f"wrk at concurrency 1, {result['options']['duration']} s per run, {result['options']['repeats']} "
        f"runs per arm alternating, fresh server per run. Machine: {m['cpu']}, {m['cores']} cores, load "
        f"average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.",
        "",
        *[f"> {n}" for n in result["notes"]],
        "",
        "| arm | settings | p50 ms (median) | p95 ms (median) | req/s | "
        "canary runs done (server life) | shadow compared / dropped (measured window) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, rs in result["runs"].items():
        med = s["median"][arm]
        canary = ", ".join(str(int(r["background"]["canary_runs_total"])) for r in rs)
        shadow = ", ".join(
            f"{int(r['background']['shadow_agree'] + r['background']['shadow_disagree'])} / "
            f"{int(r['background']['shadow_dropped'])}"
            for r in rs
        )
        settings = ", ".join(f"{k}={v}" for k, v in result["options"]["arms"][arm].items()) or "defaults"
        lines.append(
            f"| {arm} | {settings} | {med['p50_ms']:.2f} | {med['p95_ms']:.2f} | {med['rps']:.1f} "
            f"| {canary} | {shadow} |"
        )
    verdict = "met" if s["within_3_percent"] else "**NOT met**"
    off_lo, off_hi = s["p95_range_ms"]["off"]
    rounds = ", ".join(f"{c * 100:+.1f}%" for c in s["p95_c1_change_per_round"])
    lines += [
        "",
        "p95 at c=1, defaults vs off (medians of the runs): "
        f"{s['p95_c1_change_defaults_vs_off'] * 100:+.1f}% "
        f"(target: at most +3%): {verdict}. Round by round (defaults and off back to back): {rounds}; "
        f"median {s['p95_c1_change_per_round_median'] * 100:+.1f}%. The same arm's p95 ranged over "
        f"{off_lo:.0f}-{off_hi:.0f} ms (off) between runs: when that spread is many times 3%, this "
        "run can neither confirm nor refute the target; rerun on a quiet machine.",
        "",
        "How the work is kept off the request path: background slices (one model call each) run on "
        "the model thread only after it has been idle for 10 ms, so a request waits at most for one "
        "slice; a closed-loop client at c=1 leaves the model idle only for the HTTP round trip, so "
        "slices mostly wait (a full shadow queue drops, counted) and a canary run a full interval "
        "overdue runs one slice per batch. The shadow counts above say how much work did run. The "
        "busy arm shows the cost when much of it runs. Runs are measured after the start-up canary "
        "finished (its wait is in results.json, startup_canary_wait_s).",
        "",
        "![p95 per run](results.png)",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (arm, rs) in enumerate(result["runs"].items()):
        ax.scatter([i] * len(rs), [r["p95_ms"] for r in rs], label=arm)
        ax.hlines(s["median"][arm]["p95_ms"], i - 0.2, i + 0.2)
    ax.set_xticks(range(len(result["runs"])), list(result["runs"]))
    ax.set_ylabel("p95 latency at c=1 (ms)")
    ax.set_title("Captioning p95 per run: live-quality work off / defaults / busy")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)
    plt.close(fig)


def rewrite_report(out: Path = HERE) -> None:
    """results.md and results.png again from results.json (the summary recomputed from the runs)."""
    result = json.loads((out / "results.json").read_text())
    result["summary"] = summarize(result["runs"])
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result)


if __name__ == "__main__":
    main()
