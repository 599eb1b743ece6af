"""Serving benchmark: ours against its peers (a plain FastAPI route, LitServe, BentoML), in one run,
for captioning, OCR, VQA and a mix of them at each precision.

What it measures, on this machine, with the real service (``mobile-mm serve``), each peer of
``benchmarks/peers`` serving the same model, and a real load generator (``wrk``, closed loop:
each connection sends its next request when the last answered), every server cold-started in
turn for each precision (default fp32 and int2), or with ``--interleave`` all of a precision's
servers started together and their runs alternated (see ``measure_servers``):

1. **model only**: ``generate_captions([image])`` in-process, batch 1, p50/p95/p99 over
   ``--model-iters`` calls; the per-image time at batch sizes 1..32 (what batching buys); and the
   in-process ``from_pretrained`` time.
2. **HTTP**: ``POST /inference`` with the same bodies (``benchmarks/serving/workload.py``) for
   each task and for the mix (16 requests rotated: short and long captions, VQA, OCR) at
   concurrency 1, 8 and 32, ``--repeats`` runs of ``--duration`` s (medians reported),
   against: ``ours`` (batching on: ``MOBILE_MM_MAX_BATCH_SIZE=16``, ``MAX_BATCH_WAIT_MS=5``),
   ``ours_no_batching`` (``MAX_BATCH_SIZE=1``) and each peer (``plain_fastapi``, ``litserve``,
   ``bentoml``). Every comparison is a ratio ours / peer from the same run.
3. **Correctness**: every server answers the mix's 16 requests (16 at a time); the answers are
   compared with the model's in-process unbatched ones and scored against the references.
4. **Start and memory**: seconds from spawn to ``/ready`` 200 for every server, our
   ``model_load_duration_seconds`` (the guide's metric: read, verify, build, warm-up), and the
   server's resident memory (RSS; a framework peer's whole process group) when ready and after
   its load runs.

Targets: p95 < 100 ms at concurrency 1 (aim < 30 ms); batching at c=32 >= 3x batching off;
serving overhead (HTTP p50 - model-only p50, c=1, captioning) < 5 ms; model load < 10 s (the
guide's "Model Loading: Target < 10s"); against the best framework peer (issue 20), on the mix:
throughput at c=32 >= 1.5x, p99 at c=32 below, p50 at c=1 no worse; identical answers.

Usage::

    .venv/bin/python -m benchmarks.serving.run                     # fp32 and int2, every peer
    .venv/bin/python -m benchmarks.serving.run --precisions int2 --duration 2 --repeats 1 --out /tmp/s

The BentoML peer runs from its own venv (``var/peer-venvs/bentoml``), which the first run
builds (a few minutes; ``benchmarks/peers/venvs.py``); LitServe comes with ``.venv`` (the
``peers`` extra, in ``dev`` too).

Writes results.json, and (report.py) results.md, latency.png, throughput.png and model_batching.png
under --out (default: beside this file). Needs ``wrk`` (Debian package; scripts/install_system_deps.sh).
Run it on a quiet machine: results.md records the load average at start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from benchmarks.peers import PEERS
from benchmarks.serving.answers import check, collect_answers, reference_answers
from benchmarks.serving.capacity import update_doc
from benchmarks.serving.report import CONCURRENCY, plot, summarize, write_markdown
from benchmarks.serving.servers import RunningServer, serve_ours, serve_peer
from benchmarks.serving.workload import MIX, TASKS, bodies_for, mix_items, write_bodies_file

HERE = Path(__file__).resolve().parent
# No load shedding before wrk's 10 s timeout, in ours as in every peer (BentoML's max_latency_ms
# is 10 s too): a closed loop counts a quick 503 as a completed request.
NO_SHEDDING = {
    "MOBILE_MM_MAX_QUEUE": "4096",
    "MOBILE_MM_MAX_QUEUE_WAIT_S": "10",
    "MOBILE_MM_REQUEST_TIMEOUT_S": "30",
}
OURS = {
    "ours": {"MOBILE_MM_MAX_BATCH_SIZE": "16", "MOBILE_MM_MAX_BATCH_WAIT_MS": "5", **NO_SHEDDING},
    "ours_no_batching": {"MOBILE_MM_MAX_BATCH_SIZE": "1", "MOBILE_MM_MAX_BATCH_WAIT_MS": "0", **NO_SHEDDING},
    # iteration-level batching (opt-in): compared with the framework peers beside the default
    "ours_continuous": {
        "MOBILE_MM_BATCHING": "continuous",
        "MOBILE_MM_MAX_BATCH_SIZE": "16",
        **NO_SHEDDING,
    },
    # the ONNX export bundle on ONNX Runtime (`serve --runtime onnxruntime`), batches decoded
    # together through decoder_step's batch axis; the bundle is exported before the server
    # starts (ensure_onnx_bundle), so its start time is a start, not an export
    "ours_onnxruntime": {
        "MOBILE_MM_RUNTIME": "onnxruntime",
        "MOBILE_MM_MAX_BATCH_SIZE": "16",
        "MOBILE_MM_MAX_BATCH_WAIT_MS": "5",
        **NO_SHEDDING,
    },
    # the same with iteration-level batching: rows join the bundle's running decode at their own
    # positions (export/running_decode.py)
    "ours_onnxruntime_continuous": {
        "MOBILE_MM_RUNTIME": "onnxruntime",
        "MOBILE_MM_BATCHING": "continuous",
        "MOBILE_MM_MAX_BATCH_SIZE": "16",
        **NO_SHEDDING,
    },
    # the same as ours_onnxruntime with the quantized weights as float MatMuls
    # (MOBILE_MM_ONNX_WEIGHTS=float); run for quantized precisions only (an fp32 bundle has no
    # packed weight: it is ours_onnxruntime)
    "ours_onnxruntime_float": {
        "MOBILE_MM_RUNTIME": "onnxruntime",
        "MOBILE_MM_ONNX_WEIGHTS": "float",
        "MOBILE_MM_MAX_BATCH_SIZE": "16",
        "MOBILE_MM_MAX_BATCH_WAIT_MS": "5",
        **NO_SHEDDING,
    },
}
QUANTIZED_ONLY = frozenset({"ours_onnxruntime_float"})
# where ours_onnxruntime's bundles are exported once and reused (one per model and precision)
ONNX_DATA_DIR = HERE.parents[1] / "var" / "serving-bench-onnx"


@dataclass
class Options:
    model: str
    precisions: list[str]
    tasks: list[str]
    peers: list[str]
    duration: int
    repeats: int
    model_iters: int
    max_tokens: int | None
    out: Path
    onnx_data_dir: Path = ONNX_DATA_DIR
    ours: list[str] = field(default_factory=lambda: list(OURS))
    interleave: bool = False


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    return {"p50_ms": q(50), "p95_ms": q(95), "p99_ms": q(99), "mean_ms": statistics.fmean(ordered) * 1000}


def measure_model(opts: Options, quantization: str) -> dict[str, Any]:
    """Model-only latency, in this process, with the threads the server would use."""
    from mobile_multimodal.model import MobileMultiModalLLM
    from mobile_multimodal.serving.engine import configure_torch_threads
    from mobile_multimodal.serving.probe import ProbeCase

    threads = configure_torch_threads(workers=1)  # the server's own rule, so the two compare
    start = time.perf_counter()
    model = MobileMultiModalLLM.from_pretrained(opts.model, quantization=quantization)
    load_s = time.perf_counter() - start
    image = ProbeCase.default().image
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
    info = model.get_model_info()
    return {
        "mix_reference": reference_answers(model, mix_items()),
        "threads": threads,
        "from_pretrained_s": load_s,
        "batch1": _percentiles(times),
        "per_image_ms_by_batch": per_image,
        "caption": model.generate_captions([image], **kwargs)[0],
        "info": {k: v for k, v in info.items() if k in ("name", "version", "quantization", "size_bytes")},
    }


def run_wrk(url: str, concurrency: int, duration: int, body_file: Path) -> dict[str, float]:
    cmd = ["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{duration}s", "--timeout", "10s"]
    cmd += ["-s", str(HERE / "post.lua"), url + "/inference"]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
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


def scrape(url: str) -> dict[str, Any]:
    """From our /metrics: batches by size bucket per task (and summed over tasks: ``mix``), and
    model_load_duration_seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    batches: dict[str, dict[str, float]] = {}
    load_s = None
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in family.samples:
            if s.name == "batch_processing_duration_seconds_count":
                for key in (s.labels.get("task", ""), MIX):
                    per = batches.setdefault(key, {})
                    per[s.labels["batch_size"]] = per.get(s.labels["batch_size"], 0) + s.value
            elif s.name == "model_load_duration_seconds":
                load_s = s.value
    return {"batches": batches, "model_load_duration_seconds": load_s}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms")
    }


def measure_servers(
    opts: Options, servers: dict[str, RunningServer], bodies: dict[str, Path]
) -> dict[str, Any]:
    """Every server's HTTP results. Each is warmed up and answers the mix first; then for every
    task and concurrency each server gets ``opts.repeats`` wrk runs. Given several servers (the
    ``--interleave`` mode, all running at once), the runs alternate between them (ABC, CBA, ...),
    so a drift of the machine's speed during the cell hits every server alike instead of whichever
    one's turn it was."""
    out: dict[str, dict[str, Any]] = {}
    for name, server in servers.items():
        rss_ready = server.rss_bytes()
        run_wrk(server.url, 8, 3, bodies[opts.tasks[0]])  # warm-up: allocator, code paths, connections
        out[name] = {"rss_ready": rss_ready, "answers": collect_answers(server.url, mix_items()), "tasks": {}}
    names = list(servers)
    for task in opts.tasks:
        for c in CONCURRENCY:
            before = {n: scrape(servers[n].url)["batches"].get(task, {}) for n in names if n in OURS}
            runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
            for r in range(opts.repeats):
                for name in names if r % 2 == 0 else names[::-1]:
                    runs[name].append(run_wrk(servers[name].url, c, opts.duration, bodies[task]))
            for name in names:
                entry: dict[str, Any] = {"median": _median(runs[name]), "runs": runs[name]}
                if name in before:
                    after = scrape(servers[name].url)["batches"].get(task, {})
                    entry["batches_by_size"] = {k: after[k] - before[name].get(k, 0) for k in after}
                out[name]["tasks"].setdefault(task, {})[str(c)] = entry
                med = entry["median"]
                print(
                    f"{name:16s} {task:10s} c={c:<3d} rps={med['rps']:8.1f} p50={med['p50_ms']:7.2f} "
                    f"p95={med['p95_ms']:7.2f} p99={med['p99_ms']:7.2f} ms",
                    flush=True,
                )
    return {
        name: {
            "ready_s": server.ready_s,
            "rss_bytes": {"ready": out[name]["rss_ready"], "after_load": server.rss_bytes()},
            "model_load_duration_seconds": (
                scrape(server.url)["model_load_duration_seconds"] if name in OURS else None
            ),
            "answers": out[name]["answers"],
            "tasks": out[name]["tasks"],
        }
        for name, server in servers.items()
    }


def ensure_onnx_bundle(model: str, quantization: str, data_dir: Path) -> Path:
    """Export ``model`` at ``quantization`` into ``data_dir`` as the server's first start would
    (reused when there), and return the bundle's directory."""
    from mobile_multimodal.serving.runtime_loader import ensure_bundle
    from mobile_multimodal.settings import Settings

    settings = Settings(data_dir=data_dir, model=model, quantization=quantization, runtime="onnxruntime")
    bundle = ensure_bundle(settings)
    print(f"{quantization}: ONNX bundle {bundle}", flush=True)
    return bundle


def servers(opts: Options, quantization: str) -> Iterator[tuple[str, AbstractContextManager[RunningServer]]]:
    for name, env in OURS.items():
        if name not in opts.ours or (quantization == "fp32" and name in QUANTIZED_ONLY):
            continue
        if env.get("MOBILE_MM_RUNTIME") == "onnxruntime":
            # the bundle exported beforehand (its start is then a start, not an export), served
            # by --bundle from a data directory of the server's own, as any other of ours
            bundle = ensure_onnx_bundle(opts.model, quantization, opts.onnx_data_dir)
            env = {**env, "MOBILE_MM_BUNDLE": str(bundle)}
        yield name, serve_ours(opts.model, quantization, env, name=name)
    for peer in opts.peers:
        yield peer, serve_peer(peer, opts.model, quantization)


def measure_precision(opts: Options, quantization: str, bodies: dict[str, Path]) -> dict[str, Any]:
    model = measure_model(opts, quantization)
    print(f"{quantization}: model only p50={model['batch1']['p50_ms']:.2f} ms", flush=True)
    http: dict[str, Any] = {}
    if opts.interleave:  # every server up at once, their runs alternating (measure_servers)
        with ExitStack() as stack:
            running = {name: stack.enter_context(started) for name, started in servers(opts, quantization)}
            http = measure_servers(opts, running, bodies)
    else:  # one server at a time, cold-started in turn
        for name, started in servers(opts, quantization):
            with started as server:
                http.update(measure_servers(opts, {name: server}, bodies))
    correctness = check(model["mix_reference"], {n: s["answers"] for n, s in http.items()}, mix_items())
    print(f"{quantization}: every server answers the mix as the model does: {correctness['all_identical']}")
    return {"model_only": model, "servers": http, "correctness": correctness}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def host() -> dict[str, Any]:
    """What every benchmark records of the machine it ran on (the load average at its start)."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def machine() -> dict[str, Any]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {**host(), "memory_bytes": int(psutil.virtual_memory().total), "wrk": wrk}


def prepare_peers(peers: list[str]) -> dict[str, float]:
    """Build what the peers need (BentoML's venv, once) before any timing; refuse a peer that
    cannot start, with the reason. Returns the seconds each took."""
    took = {}
    for name in peers:
        started = time.perf_counter()
        PEERS[name].prepare()
        took[name] = time.perf_counter() - started
        reason = PEERS[name].unavailable()
        if reason is not None:
            raise SystemExit(f"peer {name} cannot run: {reason}")
    return took


def _csv(choices: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = [v for v in value.split(",") if v]
        bad = [v for v in items if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(choices)}")
        return items

    return parse


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--precisions", type=_csv(("fp32", "int8", "int4", "int2")), default=["fp32", "int2"])
    parser.add_argument("--tasks", type=_csv((*TASKS, MIX)), default=[*TASKS, MIX])
    parser.add_argument("--peers", type=_csv(list(PEERS)), default=list(PEERS))
    parser.add_argument(
        "--ours",
        type=_csv(list(OURS)),
        default=list(OURS),
        help="servers of ours to run (the summary needs ours and ours_no_batching)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-iters", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=None, help="caption/answer budget (API default)")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="start every server of a precision at once and alternate their wrk runs (robust to the "
        "machine's speed drifting during the run; needs the memory of all of them)",
    )
    parser.add_argument("--note", action="append", default=[], help="a line for results.md (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--onnx-data-dir", type=Path, default=ONNX_DATA_DIR, help="where ours_onnxruntime's bundles are kept"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk, or scripts/install_system_deps.sh)")
    opts = Options(
        args.model,
        args.precisions,
        args.tasks,
        args.peers,
        args.duration,
        args.repeats,
        args.model_iters,
        args.max_tokens,
        args.out,
        args.onnx_data_dir,
        args.ours,
        args.interleave,
    )
    if not {"ours", "ours_no_batching"} <= set(opts.ours):
        raise SystemExit("--ours must include ours and ours_no_batching (the summary compares them)")
    opts.out.mkdir(parents=True, exist_ok=True)
    peer_setup_s = prepare_peers(opts.peers)
    env = machine()
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {
            t: write_bodies_file(bodies_for(t, opts.max_tokens), Path(tmp) / f"{t}.jsonl") for t in opts.tasks
        }
        precisions = {q: measure_precision(opts, q, bodies) for q in opts.precisions}
    result: dict[str, Any] = {
        "options": {
            "model": opts.model,
            "precisions": opts.precisions,
            "tasks": opts.tasks,
            "peers": {p: PEERS[p].description for p in opts.peers},
            "framework_peers": [p for p in opts.peers if PEERS[p].framework],
            "peer_setup_s": peer_setup_s,
            "duration": opts.duration,
            "repeats": opts.repeats,
            "max_tokens": opts.max_tokens,
            "ours": {name: env for name, env in OURS.items() if name in opts.ours},
            "interleave": opts.interleave,
        },
        "machine": env,
        "notes": args.note,
        "precisions": precisions,
    }
    result["summary"] = summarize(result)
    (opts.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(opts.out / "results.md", result)
    plot(opts.out, result)
    if opts.out.resolve() == HERE:  # the committed results: docs/deploy.md's capacity section follows
        try:
            update_doc(result)
        except ValueError as exc:  # a run without INT2 captioning: the section cannot be rendered
            print(f"docs/deploy.md's capacity section not rewritten: {exc}")
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
