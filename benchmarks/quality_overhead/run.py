"""What the live-quality work (canary, shadow comparison) costs serving: an A/B in one server.

The real service (``mobile-mm serve``, the int2 model, so the shadow replays through the fp32
reference) under ``wrk`` at concurrency 1, captioning, with the live-quality work

* **off**: ``MOBILE_MM_CANARY_INTERVAL_S=0``, ``MOBILE_MM_SHADOW_SAMPLE_RATE=0``;
* **defaults**: the shipped defaults (a canary run every 300 s, 1% of requests shadowed);
* **busy** (for the record, not the target): a canary every 15 s and 20% of requests shadowed.

Why one server: comparing fresh servers per arm measured mostly the servers (the same arm's p95
moved 38-44 ms from one process to the next, many times the 3% being judged). Here one server
serves every block; the arm is switched the way an operator would, by rewriting its settings
file (``MOBILE_MM_SETTINGS_FILE``) and sending SIGHUP (serving/reload.py applies the canary and
shadow settings live; the benchmark waits until ``config_changes_total{source="reload"}`` says the
reload happened). Blocks alternate off/defaults in ABBA order so drift penalises neither arm.

A switch to the defaults restarts the canary duty, which starts with a run; like the start-up run
in production, that run is waited out before the block is measured (steady state between runs,
each run's duration recorded). What a run costs while it runs is what the busy arm shows. The
target (issue 14): the median over block pairs of p95(defaults)/p95(off) − 1 at most +3%; a
bootstrap 95% interval says how well the run pins it.

Usage::

    nice -n 0 .venv/bin/python -m benchmarks.quality_overhead.run --pairs 16 --block-s 10

Writes results.json, results.md and results.png beside this file (or under --out).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from benchmarks.serving.run import machine, run_wrk
from benchmarks.serving.servers import RunningServer, serve_ours
from benchmarks.serving.workload import task_body, write_body_file
from prometheus_client.parser import text_string_to_metric_families

from mobile_multimodal.settings import Settings

HERE = Path(__file__).resolve().parent
_DEFAULTS = {
    "MOBILE_MM_CANARY_INTERVAL_S": f"{Settings.model_fields['canary_interval_s'].default:g}",
    "MOBILE_MM_SHADOW_SAMPLE_RATE": f"{Settings.model_fields['shadow_sample_rate'].default:g}",
}
ARMS = {
    "off": {"MOBILE_MM_CANARY_INTERVAL_S": "0", "MOBILE_MM_SHADOW_SAMPLE_RATE": "0"},
    "defaults": _DEFAULTS,
    "busy": {"MOBILE_MM_CANARY_INTERVAL_S": "15", "MOBILE_MM_SHADOW_SAMPLE_RATE": "0.2"},
}
COUNTERS = {
    "canary_runs": ("model_canary_runs_total", {"status": "success"}),
    "shadow_agree": ("quantization_shadow_comparisons_total", {"result": "agree"}),
    "shadow_disagree": ("quantization_shadow_comparisons_total", {"result": "disagree"}),
    "shadow_dropped": ("quantization_shadow_comparisons_total", {"result": "dropped"}),
    "reloads": ("config_changes_total", {"source": "reload"}),
}
WAIT_S = 300  # a canary run or a reload on a busy machine; only a failure waits this long


def counters(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    out = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key, (name, labels) in COUNTERS.items():
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    out[key] += sample.value
    return out


def _wait(url: str, what: str, done: Any) -> float:
    started = time.monotonic()
    while not done(counters(url)):
        if time.monotonic() - started > WAIT_S:
            raise TimeoutError(f"no {what} within {WAIT_S} s")
        time.sleep(0.2)
    return time.monotonic() - started


def switch(server: RunningServer, settings_file: Path, arm: str) -> dict[str, float]:
    """Put ``arm`` in force (settings file + SIGHUP); wait out the canary run it starts."""
    before = counters(server.url)
    settings_file.write_text("".join(f"{k}={v}\n" for k, v in ARMS[arm].items()))
    server.process.send_signal(signal.SIGHUP)
    reload_s = _wait(server.url, "reload", lambda c: c["reloads"] > before["reloads"])
    canary_s = 0.0
    if ARMS[arm]["MOBILE_MM_CANARY_INTERVAL_S"] != "0":
        canary_s = _wait(server.url, "canary run", lambda c: c["canary_runs"] > before["canary_runs"])
    return {"reload_s": reload_s, "canary_wait_s": canary_s}


def block(
    server: RunningServer, settings_file: Path, arm: str, previous: str, block_s: int, body: Path
) -> dict[str, Any]:
    # the same arm twice in a row (ABBA): nothing to switch, the block continues its steady state
    switched = (
        {"reload_s": 0.0, "canary_wait_s": 0.0} if arm == previous else switch(server, settings_file, arm)
    )
    run_wrk(server.url, 1, 1, body)  # warm-up after the switch
    before = counters(server.url)
    measured = run_wrk(server.url, 1, block_s, body)
    after = counters(server.url)
    return {**measured, **switched, "arm": arm, "background": {k: after[k] - before[k] for k in after}}


def bootstrap_median_ci(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def summarize(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for b in blocks:
        by_arm.setdefault(b["arm"], []).append(b)
    median = {
        arm: {k: statistics.median(b[k] for b in bs) for k in ("p50_ms", "p95_ms", "rps")}
        for arm, bs in by_arm.items()
    }
    # consecutive off/defaults blocks (in either order) form a pair: their ratio is what drift spares
    pairs = [b for b in blocks if b["arm"] in ("off", "defaults")]
    paired = []
    for first, second in zip(pairs[::2], pairs[1::2], strict=False):
        off, on = (first, second) if first["arm"] == "off" else (second, first)
        paired.append(on["p95_ms"] / off["p95_ms"] - 1)
    change = statistics.median(paired)
    low, high = bootstrap_median_ci(paired)
    return {
        "median": median,
        "p95_c1_change_per_pair": paired,
        "p95_c1_change_defaults_vs_off": change,
        "p95_c1_change_ci95": [low, high],
        "within_3_percent": change <= 0.03,
        "ci_within_3_percent": high <= 0.03,
        "p95_range_ms": {
            arm: (min(b["p95_ms"] for b in bs), max(b["p95_ms"] for b in bs)) for arm, bs in by_arm.items()
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="int2")
    parser.add_argument("--pairs", type=int, default=16, help="off/defaults block pairs")
    parser.add_argument("--block-s", type=int, default=10, help="seconds of wrk per block")
    parser.add_argument("--busy-blocks", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], help="extra MOBILE_MM_X=V for the server")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    env = machine()
    blocks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        body = write_body_file(task_body("captioning"), Path(tmp) / "body.json")
        settings_file = Path(tmp) / "settings.env"
        settings_file.write_text("".join(f"{k}={v}\n" for k, v in _DEFAULTS.items()))
        extra = {"MOBILE_MM_SETTINGS_FILE": str(settings_file), **dict(e.split("=", 1) for e in args.env)}
        with serve_ours(args.model, args.quantization, extra) as server:
            _wait(server.url, "start-up canary run", lambda c: c["canary_runs"] >= 1)
            order = [
                arm for i in range(args.pairs) for arm in (("off", "defaults"), ("defaults", "off"))[i % 2]
            ]
            previous = "defaults"
            for arm in [*order, *["busy"] * args.busy_blocks]:
                b = block(server, settings_file, arm, previous, args.block_s, body)
                blocks.append(b)
                previous = arm
                print(f"{arm:9s} p50={b['p50_ms']:.2f} ms p95={b['p95_ms']:.2f} ms rps={b['rps']:.1f} "
                      f"background={b['background']}", flush=True)  # fmt: skip
    result = {
        "options": {
            "model": args.model,
            "quantization": args.quantization,
            "pairs": args.pairs,
            "block_s": args.block_s,
            "busy_blocks": args.busy_blocks,
            "env": args.env,
            "concurrency": 1,
            "arms": ARMS,
        },
        "machine": env,
        "notes": args.note,
        "blocks": blocks,
        "summary": summarize(blocks),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.out, result)
    print(json.dumps(result["summary"], indent=2))
    return result


def write_report(out: Path, result: dict[str, Any]) -> None:
    s, m, o = result["summary"], result["machine"], result["options"]
    low, high = s["p95_c1_change_ci95"]
    verdict = "met" if s["within_3_percent"] else "**NOT met**"
    lines = [
        "# Live-quality overhead (canary + shadow) on serving",
        "",
        f"`mobile-mm serve` with the {o['quantization']} model, captioning through HTTP, wrk at "
        f"concurrency 1; one server, arms switched by settings file + SIGHUP; {o['pairs']} off/defaults "
        f"block pairs (ABBA) of {o['block_s']} s, then {o['busy_blocks']} busy blocks. Machine: {m['cpu']}, "
        f"{m['cores']} cores, load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.",
        "",
        *[f"> {n}" for n in result["notes"]],
        "",
        "| arm | settings | blocks | p50 ms (median) | p95 ms (median) | p95 range ms | req/s | "
        "shadow compared / dropped (all blocks) | canary run waited out per switch (s, median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, med in s["median"].items():
        bs = [b for b in result["blocks"] if b["arm"] == arm]
        compared = sum(b["background"]["shadow_agree"] + b["background"]["shadow_disagree"] for b in bs)
        dropped = sum(b["background"]["shadow_dropped"] for b in bs)
        settings = ", ".join(f"{k}={v}" for k, v in o["arms"][arm].items())
        lo, hi = s["p95_range_ms"][arm]
        canary = statistics.median(b["canary_wait_s"] for b in bs)
        lines.append(
            f"| {arm} | {settings} | {len(bs)} | {med['p50_ms']:.2f} | {med['p95_ms']:.2f} "
            f"| {lo:.1f}-{hi:.1f} "
            f"| {med['rps']:.1f} | {int(compared)} / {int(dropped)} | {canary:.1f} |"
        )
    lines += [
        "",
        f"p95 at c=1, defaults vs off, median over the {len(s['p95_c1_change_per_pair'])} block pairs: "
        f"{s['p95_c1_change_defaults_vs_off'] * 100:+.1f}% (bootstrap 95% interval {low * 100:+.1f}% to "
        f"{high * 100:+.1f}%); target at most +3%: {verdict}"
        + ("" if s["ci_within_3_percent"] else " (the interval reaches past +3%: more pairs would pin it)")
        + ".",
        "",
        "How the work is kept off the request path: background slices (one model call each) run on "
        "the model thread only after it has been idle for 10 ms, so a request waits at most for one "
        "slice; a full shadow queue drops (counted) rather than grows. Each switch to a canary arm "
        "restarts the canary duty, whose first run is waited out before the block (its duration is "
        "the last column); between runs the defaults cost only the sampled shadow replays. The busy "
        "arm shows the cost when much of that work runs.",
        "",
        "![p95 per block](results.png)",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for arm in s["median"]:
        points = [(i, b["p95_ms"]) for i, b in enumerate(result["blocks"]) if b["arm"] == arm]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", label=arm)
    ax.set_xlabel("block (in the order run)")
    ax.set_ylabel("p95 latency at c=1 (ms)")
    ax.set_title("Captioning p95 per block, one server: live-quality work off / defaults / busy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
