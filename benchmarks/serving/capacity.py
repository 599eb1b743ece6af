"""docs/deploy.md's "Capacity per replica" section, rendered from the serving benchmark's results.json.

Everything in that section that comes from a measurement -- the table (one row per measured
concurrency of our served configuration: INT2 captioning with batching on, the median run's
requests/s and p95), the requests/s one pod carries within the p95 target, and how much headroom
KEDA's ``request-rate`` threshold (deploy/kubernetes/scaledobject.yaml) leaves -- is written here,
between two markers, so a new benchmark run rewrites it: ``benchmarks.serving.run`` calls
:func:`update_doc` when it writes the committed results (its default ``--out``), and
tests/deploy/test_deploy_docs.py checks the section equals :func:`render_section` of the
committed results.json.

Example::

    .venv/bin/python -m benchmarks.serving.capacity            # rewrite the section from results.json
    .venv/bin/python -m benchmarks.serving.capacity --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "serving" / "results.json"
DOC = REPO / "docs" / "deploy.md"
SCALED_OBJECT = REPO / "deploy" / "kubernetes" / "scaledobject.yaml"
WIDTH = 96  # the prose is wrapped like the rest of the doc
P95_TARGET_MS = 100.0  # HighInferenceLatency's warning threshold (monitoring/alerts.yml)
PRECISION, TASK = "int2", "captioning"  # what the Deployment serves, and the slowest task
START = (
    "<!-- capacity: generated from benchmarks/serving/results.json by benchmarks/serving/capacity.py "
    "(benchmarks.serving.run rewrites it; checked by tests/deploy/test_deploy_docs.py) -->"
)
END = "<!-- end capacity -->"


@dataclass(frozen=True, order=True)
class CapacityRow:
    concurrency: int
    rps: float
    p95_ms: float


def results(path: Path = RESULTS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _tasks(data: dict[str, Any]) -> dict[str, Any]:
    """Our served configuration's runs per task. Since issue 16 the benchmark measures every
    precision, task and peer ("precisions"); before, one precision's captioning ("http")."""
    if "precisions" not in data:
        return {TASK: data["http"]["batching"]}
    precision = data["precisions"].get(PRECISION)
    if precision is None:
        raise ValueError(f"results.json has no {PRECISION} runs: the capacity section needs them")
    tasks: dict[str, Any] = precision["servers"]["ours"]["tasks"]
    return tasks


def served_arm(data: dict[str, Any]) -> dict[str, Any]:
    """INT2 captioning with batching on (ours), by concurrency."""
    tasks = _tasks(data)
    if TASK not in tasks:
        raise ValueError(f"results.json has no {PRECISION} {TASK} runs: the capacity section needs them")
    arm: dict[str, Any] = tasks[TASK]
    return arm


def _rows(arm: dict[str, Any]) -> list[CapacityRow]:
    return sorted(
        CapacityRow(int(c), float(r["median"]["rps"]), float(r["median"]["p95_ms"])) for c, r in arm.items()
    )


def capacity_rows(data: dict[str, Any] | None = None) -> list[CapacityRow]:
    return _rows(served_arm(results() if data is None else data))


def request_rate_threshold(path: Path = SCALED_OBJECT) -> float:
    """KEDA's per-pod requests/s at which it adds pods (the ``request-rate`` trigger)."""
    scaled = yaml.safe_load(path.read_text())
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["name"] == "request-rate"]
    return float(trigger["metadata"]["threshold"])


def render_table(rows: list[CapacityRow]) -> str:
    lines = [
        "| concurrent clients per replica | requests/s per replica | p95 latency | p95 within 100 ms |",
        "|---:|---:|---:|:---:|",
    ]
    for row in rows:
        ok = "yes" if row.p95_ms <= P95_TARGET_MS else "no"
        lines.append(f"| {row.concurrency} | {row.rps:.0f} | {row.p95_ms:.1f} ms | {ok} |")
    return "\n".join(lines)


def _runs(options: dict[str, Any]) -> str:
    repeats, duration = options.get("repeats"), options.get("duration")
    if repeats is None or duration is None:
        return "the median run"
    return f"one run of {duration} s" if repeats == 1 else f"the median of {repeats} runs of {duration} s"


def _other_tasks(data: dict[str, Any], concurrency: int, rps: float) -> str:
    """How the other measured tasks compare at the concurrency the capacity was read at."""
    others = {
        t: float(runs[str(concurrency)]["median"]["rps"])
        for t, runs in _tasks(data).items()
        if t != TASK and str(concurrency) in runs and t in ("ocr", "vqa")
    }
    if others and all(v >= rps for v in others.values()):
        names = " and ".join(t.upper() for t in sorted(others))
        return f"the slowest task ({names} serve more: see the benchmark)"
    return "for other tasks see the benchmark"


def _para(text: str) -> str:
    """One paragraph wrapped at WIDTH, never inside a `code span`."""
    kept = re.sub(r"`[^`]+`", lambda m: m.group().replace(" ", "\0"), " ".join(text.split()))
    wrapped = textwrap.fill(kept, WIDTH, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\0", " ")


def render_section(data: dict[str, Any], threshold: float) -> str:
    """The generated part of the section: what the numbers are, the table, and what they mean."""
    rows = capacity_rows(data)
    cores = data.get("machine", {}).get("cores")
    core_text = f"{cores} CPU cores" if cores else "the benchmark machine's cores"
    pod = f"one {cores}-core pod" if cores else "one pod"
    parts = [
        _para(
            "From the committed serving benchmark, `benchmarks/serving/results.json` (INT2 model, dynamic\n"
            f"batching on, {core_text}, one replica, {_runs(data.get('options', {}))} at each concurrency;\n"
            "rerun it with `make bench`). The p95 target is 100 ms, the `HighInferenceLatency` warning\n"
            "threshold."
        ),
        render_table(rows),
    ]
    within = [r for r in rows if r.p95_ms <= P95_TARGET_MS]
    if not within:
        parts.append(
            _para(
                f"No measured concurrency kept the p95 within {P95_TARGET_MS:.0f} ms on the benchmark "
                "machine: size the pods from a benchmark on your own nodes."
            )
        )
        return "\n\n".join(parts)
    top = max(within, key=lambda r: r.rps)
    beyond = [r.concurrency for r in rows if r.concurrency > top.concurrency]
    gap = f"; between {top.concurrency} and {min(beyond)} the benchmark has no point" if beyond else ""
    clients = "client" if top.concurrency == 1 else "clients"
    share = 100 * threshold / top.rps
    if share <= 100:
        headroom = (
            f"the scaling threshold ({threshold:.0f} req/s per pod) is {share:.0f} % of what one pod\n"
            f"served, which leaves {100 - share:.0f} % headroom for bursts and for the pod being drained."
        )
    else:
        headroom = (
            f"the scaling threshold ({threshold:.0f} req/s per pod) is above what one pod served:\n"
            "lower `request-rate`'s threshold in deploy/kubernetes/scaledobject.yaml."
        )
    parts.append(
        _para(
            f"So {pod} carries about {top.rps:.0f} requests/s within the target (measured at\n"
            f"{top.concurrency} concurrent {clients}{gap}), for captioning at INT2, "
            f"{_other_tasks(data, top.concurrency, top.rps)}. For a peak of R requests/s, plan\n"
            f"ceil(R / {threshold:.0f}) pods: {headroom} These are the benchmark machine's numbers, not\n"
            "your nodes': rerun the benchmark there."
        )
    )
    return "\n\n".join(parts)


def doc_section(doc_text: str) -> str:
    """What stands between the markers now."""
    start = doc_text.index(START) + len(START)
    return doc_text[start : doc_text.index(END, start)].strip()


def with_section(doc_text: str, section: str) -> str:
    start = doc_text.index(START) + len(START)
    end = doc_text.index(END, start)
    return doc_text[:start] + "\n" + section + "\n" + doc_text[end:]


def update_doc(data: dict[str, Any], doc: Path = DOC, scaled_object: Path = SCALED_OBJECT) -> bool:
    """Rewrite ``doc``'s section from ``data``; True when it changed."""
    text = doc.read_text()
    new = with_section(text, render_section(data, request_rate_threshold(scaled_object)))
    if new == text:
        return False
    doc.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="exit 1 when the section is stale")
    args = parser.parse_args(argv)
    data = results(args.results)
    if args.check:
        stale = doc_section(args.doc.read_text()) != render_section(data, request_rate_threshold())
        print(f"{args.doc}: capacity section {'is stale' if stale else 'is up to date'}")
        return 1 if stale else 0
    changed = update_doc(data, args.doc)
    print(f"{args.doc}: capacity section {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
