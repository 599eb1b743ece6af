"""Telemetry overhead: p50 latency of ``POST /inference`` with full telemetry on vs off, in one run.

"On" is everything the service does in production: the request middleware (server span, HTTP
metrics, JSON access line), the inference stage spans at 100 % sampling
(``OTEL_TRACES_SAMPLER=always_on``) exported over OTLP/HTTP to a real receiver process, JSON logs
at INFO to stdout and the rotating file, and ``/metrics`` scraped every second. "Off" is
``MOBILE_MM_TELEMETRY_ENABLED=false`` (no middleware, no tracing), ``OTEL_SDK_DISABLED=true``, logs
at WARNING, nobody scraping; the serving code's own metric updates (a few counter increments per
request) stay, as they are not optional in the app. Three measurements, in this order:

1. In-process (``inprocess.py``, the verdict): two instances of the real app serving the same
   loaded model in one process, requests through ASGI in short alternating blocks. One process
   for both arms removes the per-process bias that two server processes carry.
2. Over HTTP: two ``mobile-mm serve`` processes side by side, a real Prometheus scraping the "on"
   one; each request sent to both back to back, the first arm alternating; repeated over
   ``--sessions`` fresh pairs of processes, because two processes with identical settings can
   differ by several percent for their whole life on a small machine.
3. The telemetry path alone (``micro.py``): microseconds per request without a model.

Run it without ``nice`` on an otherwise quiet machine.

Usage::

    .venv/bin/python -m benchmarks.telemetry.run                       # the bundled model
    .venv/bin/python -m benchmarks.telemetry.run --model DIR --blocks 4 --sessions 1 --out /tmp/t

Writes results.json, results.md and results.png (matplotlib) under --out (default: beside this file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from benchmarks.telemetry import inprocess, micro
from benchmarks.telemetry.report import plot, write_markdown
from tests.integration.prometheus_server import PrometheusServer, available
from tests.integration.servers import REPO, AppServer, free_port, scene_png_b64

from mobile_multimodal.model import bundled_model_dir

OUT_DIR = Path(__file__).resolve().parent
TARGET_OVERHEAD = 0.03
TASKS = ("captioning", "ocr")


def arm_env(arm: str, otlp_endpoint: str) -> dict[str, str]:
    """Environment of each arm's server (on top of AppServer's isolated defaults)."""
    if arm == "on":
        return {
            "MOBILE_MM_TELEMETRY_ENABLED": "true",
            "MOBILE_MM_LOG_LEVEL": "INFO",
            "MOBILE_MM_LOG_SAMPLE_RATIO": "1.0",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    return {
        "MOBILE_MM_TELEMETRY_ENABLED": "false",
        "OTEL_SDK_DISABLED": "true",
        "MOBILE_MM_LOG_LEVEL": "WARNING",
    }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies_ms),
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": statistics.fmean(latencies_ms),
    }


def overhead(on: list[float], off: list[float]) -> float:
    """Relative p50 overhead of ``on`` against ``off`` (0.02 = 2 %)."""
    return percentile(on, 50) / percentile(off, 50) - 1


def _body(task: str, i: int) -> dict[str, Any]:
    return {"image": scene_png_b64(color=("red", "blue", "green")[i % 3], seed=i), "task": task}


def timed_request(client: httpx.Client, body: dict[str, Any]) -> float:
    """Latency (ms, client side) of one request, which must succeed."""
    start = time.perf_counter()
    response = client.post("/inference", json=body)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{body['task']} request failed: {response.status_code} {response.text[:300]}")
    return elapsed


@contextlib.contextmanager
def receiving(workdir: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """A real OTLP/HTTP receiver process; after the block, the dict holds what it received."""
    port = free_port()
    report = workdir / f"otlp-receiver-{port}.json"
    cmd = [
        sys.executable,
        "-m",
        "tests.integration.otlp_receiver",
        "--port",
        str(port),
        "--report",
        str(report),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO)
    endpoint = f"http://127.0.0.1:{port}"
    received: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the receiver answers 501 to GET once it is listening
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield endpoint, received
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if report.exists():
            received.update(json.loads(report.read_text()))


def task_result(on: list[float], off: list[float], **extra: Any) -> dict[str, Any]:
    ratio = overhead(on, off)
    return {
        "on": summarize(on),
        "off": summarize(off),
        "p50_overhead": ratio,
        "pass": ratio < TARGET_OVERHEAD,
        **extra,
    }


def bootstrap_ci(
    on: list[float], off: list[float], per_block: int, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of the p50 overhead, resampling whole blocks (the unit that was alternated).

    ``on`` and ``off`` hold ``per_block`` samples per block, block after block. On this machine the
    same measurement moves by a percent or more from run to run; the interval says how far."""
    on_blocks = np.asarray(on).reshape(-1, per_block)
    off_blocks = np.asarray(off).reshape(-1, per_block)
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    for i in range(resamples):
        pick = rng.integers(0, len(on_blocks), len(on_blocks))
        ratios[i] = np.median(on_blocks[pick]) / np.median(off_blocks[pick]) - 1
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def run_inprocess(
    model_dir: Path, tasks: tuple[str, ...], blocks: int, per_block: int, workdir: Path
) -> dict[str, Any]:
    with receiving(workdir) as (endpoint, received):
        measured = asyncio.run(inprocess.measure(model_dir, tasks, blocks, per_block, endpoint))
    out: dict[str, Any] = {"blocks": blocks, "requests_per_block": per_block, "tasks": {}}
    for task, s in measured["samples"].items():
        diffs = measured["block_median_diffs_ms"][task]
        busy = measured["busy_ms"][task]
        out["tasks"][task] = task_result(
            s["on"],
            s["off"],
            median_block_difference_ms=statistics.median(diffs),
            busy_p50_overhead=overhead(busy["on"], busy["off"]),
            p50_overhead_ci95=bootstrap_ci(s["on"], s["off"], per_block),
        )
    out["samples_ms"] = measured["samples"]
    out["evidence"] = {"spans": received.get("spans", 0), "scrapes": measured["scrapes"]}
    return out


def run_micro(blocks: int, per_block: int, workdir: Path) -> dict[str, Any]:
    """The in-process measurement of the telemetry path alone, with its own OTLP receiver."""
    with receiving(workdir) as (endpoint, received):
        result = asyncio.run(micro.measure(blocks, per_block, endpoint))
    # every block runs both arms, each sending 10 settling requests before the timed ones
    result["spans_per_request"] = received.get("spans", 0) / (blocks * (per_block + 10))
    return result


def _session(
    model_dir: Path,
    workdir: Path,
    endpoint: str,
    rounds: int,
    requests: int,
    warmup: int,
    tasks: tuple[str, ...],
) -> dict[str, Any]:
    """One pair of fresh server processes (on, off), measured over ``rounds`` interleaved rounds."""
    servers = {arm: AppServer(model_dir, workdir / arm, arm_env(arm, endpoint)) for arm in ("on", "off")}
    prom: PrometheusServer | None = None
    try:
        for arm, server in servers.items():
            (workdir / arm).mkdir(parents=True)
            server.start()
        if available() is None:
            (workdir / "prom").mkdir()
            target = [{"targets": [f"127.0.0.1:{servers['on'].port}"]}]
            prom = PrometheusServer(workdir / "prom", [{"job_name": "on", "static_configs": target}]).start()
            prom.wait_for('up{job="on"}', lambda v: v == 1)  # its first scrape comes a few seconds in
        clients = {arm: httpx.Client(base_url=s.url, timeout=60) for arm, s in servers.items()}
        for client in clients.values():
            for task in tasks:
                for i in range(warmup):
                    timed_request(client, _body(task, i))
        samples: dict[str, dict[str, list[float]]] = {t: {"on": [], "off": []} for t in tasks}
        for r in range(rounds):
            for task in tasks:
                for i in range(requests):
                    # The same request to both arms back to back, the order alternating: a burst of
                    # background load hits both arms alike instead of one block of requests.
                    body = _body(task, i)
                    for arm in ("on", "off") if (r + i) % 2 == 0 else ("off", "on"):
                        samples[task][arm].append(timed_request(clients[arm], body))
        scrapes = prom.scalar('count_over_time(up{job="on"}[1h])') if prom is not None else None
        for client in clients.values():
            client.close()
    finally:
        if prom is not None:
            prom.stop()
        for server in servers.values():
            server.stop()
    return {
        "samples": samples,
        "scrapes": scrapes or 0,
        "log_lines": {arm: len(server.log_lines()) for arm, server in servers.items()},
    }


def run_http(
    model_dir: Path,
    sessions: int,
    rounds: int,
    requests: int,
    warmup: int,
    tasks: tuple[str, ...],
    workdir: Path,
) -> dict[str, Any]:
    """``sessions`` pairs of fresh server processes; latencies pooled across them."""
    with receiving(workdir) as (endpoint, received):
        done = []
        for n in range(sessions):
            done.append(_session(model_dir, workdir / f"s{n}", endpoint, rounds, requests, warmup, tasks))
            print(f"http session {n + 1}/{sessions} done", file=sys.stderr)
    out: dict[str, Any] = {
        "sessions": sessions,
        "rounds": rounds,
        "requests_per_round": requests,
        "tasks": {},
    }
    out["samples_ms"] = {}
    for task in tasks:
        on = [x for d in done for x in d["samples"][task]["on"]]
        off = [x for d in done for x in d["samples"][task]["off"]]
        out["tasks"][task] = task_result(
            on,
            off,
            session_overheads=[overhead(d["samples"][task]["on"], d["samples"][task]["off"]) for d in done],
            # pairs are the same request sent to both arms back to back
            median_paired_difference_ms=statistics.median(a - b for a, b in zip(on, off, strict=True)),
        )
        out["samples_ms"][task] = {"on": on, "off": off}
    out["evidence"] = {
        "spans": received.get("spans", 0),
        "log_lines_on": sum(d["log_lines"]["on"] for d in done),
        "log_lines_off": sum(d["log_lines"]["off"] for d in done),
        "scrapes": sum(d["scrapes"] for d in done),
    }
    return out


def environment(model_dir: Path) -> dict[str, Any]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return {
        "model_dir": str(model_dir),
        "model": {"name": manifest.get("name"), "version": manifest.get("version")},
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "niceness": os.nice(0),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=bundled_model_dir())
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--blocks", type=int, default=120, help="in-process: alternating blocks")
    parser.add_argument("--per-block", type=int, default=20, help="in-process: requests per block and arm")
    parser.add_argument(
        "--sessions", type=int, default=6, help="over HTTP: pairs of fresh processes (0: skip)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="over HTTP: rounds per session")
    parser.add_argument(
        "--requests", type=int, default=40, help="over HTTP: requests per round, task and arm"
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--micro-blocks", type=int, default=20, help="telemetry path alone (0: skip)")
    parser.add_argument("--micro-requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if not (args.model / "manifest.json").exists():
        raise SystemExit(f"error: no model at {args.model} (train one, or pass --model DIR)")
    tasks = tuple(args.tasks)
    result: dict[str, Any] = {"environment": environment(args.model), "target_overhead": TARGET_OVERHEAD}
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        work = Path(tmp)
        result["inprocess"] = run_inprocess(args.model, tasks, args.blocks, args.per_block, work)
        print("in-process measurement done", file=sys.stderr)
        if args.sessions:
            result["http"] = run_http(
                args.model, args.sessions, args.rounds, args.requests, args.warmup, tasks, work
            )
        if args.micro_blocks:
            result["micro"] = run_micro(args.micro_blocks, args.micro_requests, work)
            result["micro"]["share_of_p50"] = {
                task: result["micro"]["median_diff_us"] / 1000 / r["off"]["p50_ms"]
                for task, r in result["inprocess"]["tasks"].items()
            }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "results.md")
    plotted = plot(result, args.out / "results.png")
    print((args.out / "results.md").read_text())
    if not plotted:
        print("matplotlib not installed: no results.png", file=sys.stderr)


if __name__ == "__main__":
    main()
