"""Serving benchmark: captioning latency and throughput through HTTP, with and without batching.

What it measures, on this machine, with the real service (``mobile-mm serve``) and a real load
generator (``wrk``, closed loop: each connection sends its next request when the last answered):

1. **model only**: ``generate_captions([image])`` in-process, batch 1, p50/p95/p99 over
   ``--model-iters`` calls; and the per-image time at batch sizes 1..32 (what batching buys).
2. **HTTP, batching on** (``MOBILE_MM_MAX_BATCH_SIZE=16``, ``MOBILE_MM_MAX_BATCH_WAIT_MS=5``) and
   **HTTP, batching off** (``MOBILE_MM_MAX_BATCH_SIZE=1``): ``POST /inference`` captioning of a
   64x64 PNG scene at concurrency 1, 8 and 32, each run ``--repeats`` times for ``--duration`` s;
   the medians of the repeats are reported.

Targets (the issue's): p95 < 100 ms at concurrency 1 (aim < 30 ms); throughput with batching at
concurrency 32 >= 3x batching off; serving overhead (HTTP p50 - model-only p50, concurrency 1)
< 5 ms.

Usage::

    .venv/bin/python -m benchmarks.serving.run --model default --quantization int2
    .venv/bin/python -m benchmarks.serving.run --model DIR --quantization fp32 --duration 5 --repeats 1

Writes results.json, and (report.py) results.md, latency.png, throughput.png and model_batching.png
under --out (default: beside this file). Needs ``wrk`` (Debian package; scripts/install_system_deps.sh).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from benchmarks.serving.report import CONCURRENCY, plot, write_markdown
from tests.integration.servers import free_port, wait_http

HERE = Path(__file__).resolve().parent
ARMS = {
    "batching": {"MOBILE_MM_MAX_BATCH_SIZE": "16", "MOBILE_MM_MAX_BATCH_WAIT_MS": "5"},
    "no_batching": {"MOBILE_MM_MAX_BATCH_SIZE": "1", "MOBILE_MM_MAX_BATCH_WAIT_MS": "0"},
}


@dataclass
class Options:
    model: str
    quantization: str
    duration: int
    repeats: int
    model_iters: int
    max_tokens: int | None
    out: Path


def _image_png() -> bytes:
    from mobile_multimodal.serving.probe import ProbeCase

    buf = io.BytesIO()
    ProbeCase.default().image.save(buf, format="PNG")
    return buf.getvalue()


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    return {"p50_ms": q(50), "p95_ms": q(95), "p99_ms": q(99), "mean_ms": statistics.fmean(ordered) * 1000}


def measure_model(opts: Options, png: bytes) -> dict[str, Any]:
    """Model-only latency, in this process, with the threads the server would use."""
    from PIL import Image

    from mobile_multimodal.model import MobileMultiModalLLM
    from mobile_multimodal.serving.engine import configure_torch_threads

    threads = configure_torch_threads(workers=1)  # the server's own rule, so the two compare
    model = MobileMultiModalLLM.from_pretrained(opts.model, quantization=opts.quantization)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    kwargs: dict[str, Any] = {} if opts.max_tokens is None else {"max_tokens": opts.max_tokens}
    for _ in range(10):
        model.generate_captions([image], **kwargs)
    times = []
    for _ in range(opts.model_iters):
        start = time.perf_counter()
        model.generate_captions([image], **kwargs)
        times.append(time.perf_counter() - start)
    per_image: dict[str, float] = {}
    for size in (1, 2, 4, 8, 16, 32):
        batch = [image] * size
        model.generate_captions(batch, **kwargs)
        runs = []
        for _ in range(max(3, 40 // size)):
            start = time.perf_counter()
            model.generate_captions(batch, **kwargs)
            runs.append(time.perf_counter() - start)
        per_image[str(size)] = statistics.median(runs) / size * 1000
    caption = model.generate_captions([image], **kwargs)[0]
    return {
        "threads": threads,
        "batch1": _percentiles(times),
        "per_image_ms_by_batch": per_image,
        "caption": caption,
        "info": {
            k: v
            for k, v in model.get_model_info().items()
            if k in ("name", "version", "quantization", "parameters", "size_bytes")
        },
    }


def start_server(
    opts: Options, env_extra: dict[str, str], data_dir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "MOBILE_MM_DATA_DIR": str(data_dir),
        "MOBILE_MM_AUTH": "disabled",
        "MOBILE_MM_MAX_QUEUE": "4096",
        **env_extra,
    }
    cmd = [
        sys.executable,
        "-m",
        "mobile_multimodal.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        opts.model,
        "--quantization",
        opts.quantization,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", timeout_s=180, process=proc)
    except TimeoutError:
        proc.kill()
        raise
    return proc, url


def run_wrk(url: str, concurrency: int, duration: int, body_file: Path) -> dict[str, float]:
    threads = min(2, concurrency)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "post.lua"),
        url + "/inference",
    ]
    out = subprocess.run(
        cmd, env={**os.environ, "BENCH_BODY_FILE": str(body_file)}, check=True, capture_output=True, text=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))
    raw = json.loads(line[len("WRK_JSON ") :])
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "requests": raw["requests"],
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
    }


def batch_histogram(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "batch_processing_duration_seconds_count" and s.labels.get("task") == "captioning":
                counts[s.labels["batch_size"]] = counts.get(s.labels["batch_size"], 0) + s.value
    return counts


def measure_http(opts: Options, body_file: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for arm, env in ARMS.items():
        with tempfile.TemporaryDirectory() as data_dir:
            proc, url = start_server(opts, env, Path(data_dir))
            try:
                run_wrk(url, 8, 3, body_file)  # warm-up: allocator, JIT'd paths, connection setup
                arm_results: dict[str, Any] = {}
                for c in CONCURRENCY:
                    before = batch_histogram(url)
                    runs = [run_wrk(url, c, opts.duration, body_file) for _ in range(opts.repeats)]
                    after = batch_histogram(url)
                    median = {
                        k: statistics.median(r[k] for r in runs)
                        for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms")
                    }
                    arm_results[str(c)] = {
                        "median": median,
                        "runs": runs,
                        "batches_by_size": {k: after.get(k, 0) - before.get(k, 0) for k in after},
                    }
                    print(
                        f"{arm:12s} c={c:<3d} rps={median['rps']:8.1f} p50={median['p50_ms']:7.2f} ms "
                        f"p95={median['p95_ms']:7.2f} ms p99={median['p99_ms']:7.2f} ms",
                        flush=True,
                    )
                results[arm] = arm_results
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    return results


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
    }


def summarize(model: dict[str, Any], http: dict[str, Any]) -> dict[str, Any]:
    on, off = http["batching"], http["no_batching"]
    c1 = on["1"]["median"]
    overhead = c1["p50_ms"] - model["batch1"]["p50_ms"]
    speedup = on["32"]["median"]["rps"] / off["32"]["median"]["rps"]
    return {
        "p95_c1_ms": c1["p95_ms"],
        "p95_c1_under_100ms": c1["p95_ms"] < 100,
        "p95_c1_under_30ms": c1["p95_ms"] < 30,
        "batching_speedup_c32": speedup,
        "batching_speedup_at_least_3x": speedup >= 3,
        "serving_overhead_p50_ms": overhead,
        "serving_overhead_under_5ms": overhead < 5,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="int2")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-iters", type=int, default=200)
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="caption budget (default: the API's, 32)"
    )
    parser.add_argument("--note", action="append", default=[], help="a line for results.md (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk, or scripts/install_system_deps.sh)")
    opts = Options(
        args.model,
        args.quantization,
        args.duration,
        args.repeats,
        args.model_iters,
        args.max_tokens,
        args.out,
    )
    opts.out.mkdir(parents=True, exist_ok=True)
    png = _image_png()
    body: dict[str, Any] = {
        "image": "data:image/png;base64," + base64.b64encode(png).decode(),
        "task": "captioning",
    }
    if opts.max_tokens is not None:
        body["max_tokens"] = opts.max_tokens
    env = machine()
    model = measure_model(opts, png)
    print(
        f"model only  p50={model['batch1']['p50_ms']:.2f} ms p95={model['batch1']['p95_ms']:.2f} ms",
        flush=True,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(body, f)
        body_file = Path(f.name)
    try:
        http = measure_http(opts, body_file)
    finally:
        body_file.unlink()
    result = {
        "options": {
            "model": opts.model,
            "quantization": opts.quantization,
            "duration": opts.duration,
            "repeats": opts.repeats,
            "max_tokens": opts.max_tokens,
            "arms": ARMS,
        },
        "machine": env,
        "notes": args.note,
        "model_only": model,
        "http": http,
        "summary": summarize(model, http),
    }
    (opts.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(opts.out / "results.md", result)
    plot(opts.out, result)
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
