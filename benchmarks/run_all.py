"""Run every benchmark, one after another, each with its default arguments (``make bench``).

Each runs in its own process (``python -m benchmarks.<name>.run``), exactly as its docstring
tells a user to start it, so one benchmark's threads, servers or imported libraries cannot
skew the next one's timings. A failed benchmark does not stop the others (a missing ``wrk``
should not cost the quantization numbers); the exit status is 1 if any failed.

Every benchmark writes its results.json / results.md (and plots) beside its script; see each
``benchmarks/<name>/run.py`` for what it measures and what it needs (the bundled model, ``wrk``,
``k6`` for reliability, the ``bench`` extra for the quantization peers).

Usage::

    .venv/bin/python -m benchmarks.run_all                      # all of them, in the order below
    .venv/bin/python -m benchmarks.run_all serving telemetry    # some of them
    .venv/bin/python -m benchmarks.run_all backbone              # on demand only: it trains models
    .venv/bin/python -m benchmarks.run_all before_after          # on demand: against an older commit
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Serving first: it is the one the service's latency targets are judged on; the OCR peer last.
BENCHMARKS = (
    "serving",
    "runtime",
    "reliability",
    "quality_overhead",
    "telemetry",
    "quantization",
    "export",
    "ocr_decoding",
    "ocr_baseline",
    "training",
)
# Run only when named: backbone trains models for the better part of an hour; before_after
# compares the service with an older commit (issue 17's before/after), not a standing target.
ON_DEMAND = ("backbone", "before_after")


def available(include_on_demand: bool = True) -> list[str]:
    """The benchmarks (of BENCHMARKS, then ON_DEMAND) whose ``run.py`` exists in this checkout."""
    names = BENCHMARKS + ON_DEMAND if include_on_demand else BENCHMARKS
    return [name for name in names if (HERE / name / "run.py").is_file()]


def command(name: str) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.{name}.run"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "names",
        nargs="*",
        help=f"benchmarks to run (default: {available(False)}; also on demand: {list(ON_DEMAND)})",
    )
    args = parser.parse_args(argv)
    names: list[str] = args.names or available(include_on_demand=False)
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {available()}")
    outcomes: list[tuple[str, int, float]] = []
    for name in names:
        print(f"=== {' '.join(command(name)[1:])}", flush=True)
        start = time.perf_counter()
        returncode = subprocess.call(command(name), cwd=REPO)
        outcomes.append((name, returncode, time.perf_counter() - start))
    print("\n=== summary")
    for name, returncode, seconds in outcomes:
        status = "ok" if returncode == 0 else f"FAILED (exit {returncode})"
        print(f"{name:<14} {status:<18} {seconds:8.1f} s")
    return 1 if any(returncode != 0 for _, returncode, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
