"""docs/deploy.md's capacity table, from the committed serving benchmark (benchmarks/serving/results.json).

One row per measured concurrency of the batching arm (the served configuration): the median
run's requests per second and p95 latency, on the benchmark's machine (one replica).

Example::

    rows = capacity_rows()
    print(render_table(rows))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "serving" / "results.json"
P95_TARGET_MS = 100.0  # HighInferenceLatency's warning threshold (monitoring/alerts.yml)


@dataclass(frozen=True, order=True)
class CapacityRow:
    concurrency: int
    rps: float
    p95_ms: float


def results() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RESULTS.read_text())
    return data


def served_arm(data: dict[str, Any]) -> dict[str, Any]:
    """Our served configuration's captioning runs at INT2, by concurrency. Since issue 16 the
    benchmark measures every precision, task and peer ("precisions"); before, one precision's
    captioning with batching on and off ("http")."""
    if "precisions" in data:
        arm: dict[str, Any] = data["precisions"]["int2"]["servers"]["ours"]["tasks"]["captioning"]
        return arm
    old: dict[str, Any] = data["http"]["batching"]
    return old


def capacity_rows() -> list[CapacityRow]:
    arm = served_arm(results())
    return sorted(
        CapacityRow(int(c), float(r["median"]["rps"]), float(r["median"]["p95_ms"])) for c, r in arm.items()
    )


def render_table(rows: list[CapacityRow]) -> str:
    """The markdown table docs/deploy.md carries between its capacity markers."""
    lines = [
        "| concurrent clients per replica | requests/s per replica | p95 latency | p95 within 100 ms |",
        "|---:|---:|---:|:---:|",
    ]
    for row in rows:
        ok = "yes" if row.p95_ms <= P95_TARGET_MS else "no"
        lines.append(f"| {row.concurrency} | {row.rps:.0f} | {row.p95_ms:.1f} ms | {ok} |")
    return "\n".join(lines)


if __name__ == "__main__":  # `.venv/bin/python -m tests.deploy.capacity`: the table for docs/deploy.md
    print(render_table(capacity_rows()))
