"""Quantization benchmark: our INT8/INT4/INT2 vs optimum-quanto, hqq and ONNX Runtime MatMulNBits RTN.

One run, one machine, the same held-out examples for every row:

- fp32: the bundled model.
- ours: the shipped variants (``<model>/int8``, ``int4``, ``int2``), loaded with
  ``from_pretrained`` exactly as users load them; plus, as ablations, our INT2 with each of the
  shipped INT2's choices undone in turn (round-to-nearest instead of GPTQ, the other zero
  points, GPTQ on every layer or only where calibration covers it) and with `mobile-mm
  quantize`'s former defaults at 2 bits, whole zero points and GPTQ everywhere
  (``int2_ablations``: built in memory, same policy, group size and calibration).
- peers at 2 and 4 bits on the same low-bit layers at the same group size where the library
  allows it (see peers.py), the policy's INT8 layers identical to ours.

For each row: every task's primary metric and its accuracy loss against fp32
((fp32 − quantized) / fp32, DESIGN.md), stored bits per weight of the low-bit layers, model
size, and CPU latency of fixed workloads relative to fp32 (torch rows only).

Usage::

    nice -n 10 .venv/bin/python -m benchmarks.quantization.run --limit 1000 --repeats 30
    nice -n 10 .venv/bin/python -m benchmarks.quantization.run --limit 20 --out /tmp/qbench --no-ablations

Writes results.json, results.md and results.png into --out (default: this directory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # per-batch progress bars would drown the log

import torch
from benchmarks.quantization import peers
from benchmarks.quantization.report import TARGETS, write_markdown, write_plot

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.llm import resolve_model_dir
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.model.preprocess import ImageInput
from mobile_multimodal.model.quantized_layers import PackedWeight, set_weight_cache
from mobile_multimodal.model.quantized_weight import QuantizedWeight
from mobile_multimodal.quantization.gptq import MIN_ROWS_PER_INPUT, quantize_gptq_layers
from mobile_multimodal.quantization.policy import DEFAULT_GROUP_SIZE, make_plan
from mobile_multimodal.quantization.rtn import quantize_rtn_layers
from mobile_multimodal.training.evaluate import TASKS, evaluate_loaded
from mobile_multimodal.training.quantize import QuantizeOptions, calibration_builder, calibration_forward

OUT = Path(__file__).resolve().parent


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "optimum-quanto", "hqq", "onnx", "onnxruntime", "mobile-multimodal-llm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def latency(models: dict[str, MobileMultiModalLLM], repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of fixed workloads for every model (greedy decoding to each model's
    own end token). Models take turns repetition by repetition, so a change of machine load
    during the measurement hits them all alike."""
    scenes: list[ImageInput] = [e.image for e in load_eval_split("captioning", 16)]
    vqa = load_eval_split("vqa", 1)[0]
    line: ImageInput = load_eval_split("ocr", 1)[0].image

    def workloads(m: MobileMultiModalLLM) -> dict[str, Callable[[], object]]:
        return {
            "caption_1": lambda: m.generate_captions(scenes[:1]),
            "caption_16": lambda: m.generate_captions(scenes),
            "vqa_1": lambda: m.answer_questions([vqa.image], [vqa.question]),
            "ocr_1": lambda: m.extract_texts([line]),
            "image_embedding_1": lambda: m.get_image_embeddings(scenes[:1]),
        }

    work = {name: workloads(m) for name, m in models.items()}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    tokens: dict[str, dict[str, int]] = {name: {} for name in models}
    for w in work[next(iter(models))]:
        for name, m in models.items():
            result = work[name][w]()  # warm-up; decoding workloads: count the tokens generated
            if w.startswith(("caption", "vqa")) and isinstance(result, list):
                tokens[name][w] = sum(len(m.tokenizer.encode(str(t))) + 1 for t in result)
        for _ in range(max(1, repeats // 4) if w == "caption_16" else repeats):
            for name in models:
                t = time.perf_counter()
                work[name][w]()
                times[name].setdefault(w, []).append((time.perf_counter() - t) * 1e3)
    out: dict[str, dict[str, float]] = {}
    for name, per in times.items():
        ms = {w: statistics.median(v) for w, v in per.items()}
        # models stop at their own end token, so decoding is also compared per generated token
        ms.update({f"{w}_per_token": ms[w] / n for w, n in tokens[name].items()})
        out[name] = {w: round(v, 3) for w, v in ms.items()}
    for name in models:
        out[name].update({f"{w}_vs_fp32": round(out[name][w] / out["fp32"][w], 3) for w in list(out[name])})
    return out


def _wait_for(model: str, quantization: str, wait_s: float) -> None:
    """Wait (up to wait_s) for a variant that a concurrent `mobile-mm quantize` is still writing."""
    deadline = time.time() + wait_s
    while True:
        try:
            manifest = json.loads((resolve_model_dir(model, quantization) / "manifest.json").read_text())
            if "eval" in manifest:  # quantize writes its report last
                return
        except (OSError, ValueError, ModelLoadError):
            pass
        if time.time() > deadline:
            raise SystemExit(f"no finished {quantization} variant of {model} after {wait_s:.0f} s")
        time.sleep(10)


def _low_bit_stats(model: MobileMultiModalLLM) -> tuple[int, int]:
    """(stored bytes, weights) of the packed layers below 8 bits of a loaded variant."""
    stored = weights = 0
    for m in model.network.modules():
        if isinstance(m, PackedWeight) and m.bits < 8:
            stored += m.quantized().storage_bytes()
            weights += math.prod(m.weight_shape)
    return stored, weights


def _row(
    name: str,
    family: str,
    bits: int,
    group_size: int | None,
    report: dict[str, Any],
    fp32: dict[str, Any],
    stored: int,
    weights: int,
    size_bytes: int | None,
    note: str,
) -> dict[str, Any]:
    tasks = {}
    for task, r in report["tasks"].items():
        ref = fp32["tasks"][task]["primary"]
        tasks[task] = {
            "primary": r["primary"],
            "n": r["n"],
            "accuracy_loss": None if ref == 0 else (ref - r["primary"]) / ref,
        }
    losses = [t["accuracy_loss"] for t in tasks.values() if t["accuracy_loss"] is not None]
    return {
        "name": name,
        "family": family,
        "bits": bits,
        "group_size": group_size,
        "low_bit_bits_per_weight": round(8 * stored / weights, 4) if weights else None,
        "size_bytes": size_bytes,
        "tasks": tasks,
        "max_accuracy_loss": max(losses, default=0.0),
        "mean_accuracy_loss": sum(losses) / len(losses) if losses else 0.0,
        "note": note,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    fp32 = MobileMultiModalLLM.from_pretrained(args.model)
    net = fp32.network
    limit = args.limit
    started = time.time()
    rows: list[dict[str, Any]] = []
    timed: dict[str, MobileMultiModalLLM] = {"fp32": fp32}

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    def wrap(network: MultiModalNet, label: str) -> MobileMultiModalLLM:
        model = MobileMultiModalLLM(
            network, fp32.tokenizer, {"name": fp32.manifest.get("name")}, None, quantization=label
        )
        model.ocr_reader = fp32.ocr_reader  # text lines read as the shipped variants read them
        return model

    log("fp32")
    fp32_report = evaluate_loaded(fp32, limit, TASKS)
    fp32_size = fp32.size_bytes()
    rows.append(_row("fp32", "fp32", 32, None, fp32_report, fp32_report, 0, 0, fp32_size, "bundled model"))

    gs = args.group_size
    plans = {b: make_plan(net, b, gs) for b in (2, 4)}
    int8 = quantize_rtn_layers(net, {n: s for n, s in plans[2].items() if s.bits == 8})
    if args.ablations:
        # the calibration `mobile-mm quantize` uses (batch sizes, scene size, data version)
        calibration = QuantizeOptions(bits=2, out=args.out)
        builder = calibration_builder(fp32, calibration)
        batches = [builder.build(i) for i in range(calibration.calibration_batches)]
        _wait_for(args.model, "int2", args.wait_s)
        shipped_manifest = resolve_model_dir(args.model, "int2") / "manifest.json"
        shipped = json.loads(shipped_manifest.read_text())["quantization"]
        ablations = int2_ablations(net, plans[2], batches, shipped)
        for label, build, note in ablations:
            log(f"{label} (ablation)")
            quantized = build()
            low = [q for q in quantized.values() if q.bits < 8]
            network = peers.with_int8_layers(net, quantized)
            rows.append(
                _row(
                    label,
                    "ours-ablation",
                    2,
                    gs,
                    evaluate_loaded(wrap(network, "int2"), limit, TASKS),
                    fp32_report,
                    sum(q.storage_bytes() for q in low),
                    sum(math.prod(q.shape) for q in low),
                    None,
                    note,
                )
            )

    for bits in (2, 4):
        for peer in args.peers:
            log(f"{peer} {bits}-bit")
            result = peers.PEERS[peer](net, int8, plans[bits], bits, gs)
            label = f"{peer} int{bits}"
            model = wrap(result.network, f"int{bits}")
            rows.append(
                _row(
                    label,
                    peer,
                    bits,
                    result.group_size,
                    evaluate_loaded(model, limit, TASKS),
                    fp32_report,
                    result.stored_bytes,
                    result.weights,
                    None,
                    result.note,
                )
            )
            if peer == "hqq":  # the other peers compute in torch with their dequantized weights
                timed[label] = model

    for q in ("int8", "int4", "int2"):
        _wait_for(args.model, q, args.wait_s)
        log(f"ours {q}")
        model = MobileMultiModalLLM.from_pretrained(args.model, quantization=q)
        section = model.manifest["quantization"]
        stored, weights = _low_bit_stats(model)
        rows.append(
            _row(
                f"ours {q} ({section['method']})",
                "ours",
                int(section["bits"]),
                section["group_size"],
                evaluate_loaded(model, limit, TASKS),
                fp32_report,
                stored,
                weights,
                model.size_bytes(),
                f"shipped variant {q}/, policy {section['policy']}",
            )
        )
        timed[q] = model
        cached = MobileMultiModalLLM.from_pretrained(args.model, quantization=q)
        set_weight_cache(cached.network, True)
        timed[f"{q} + float cache"] = cached

    log("latency")
    lat = latency(timed, args.repeats)
    memory = {name: sum(m.component_memory_bytes().values()) for name, m in timed.items()}
    order = {"fp32": 0, "ours": 1, "ours-ablation": 2}
    rows.sort(key=lambda r: (order.get(r["family"], 3), -r["bits"] if r["family"] == "ours" else r["bits"]))
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - started, 1),
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "load_average": os.getloadavg(),
            "versions": _versions(),
        },
        "config": {
            "model": str(args.model),
            "eval_limit_per_task": limit,
            "group_size": gs,
            "latency_repeats": args.repeats,
            "peers": args.peers,
        },
        "fp32": {
            "size_bytes": fp32_size,
            "tasks": {t: r["primary"] for t, r in fp32_report["tasks"].items()},
        },
        "rows": rows,
        "latency_ms": lat,
        "memory_bytes": memory,
    }
    results["checks"] = check_targets(results)
    return results


def int2_ablations(
    net: MultiModalNet, plan: dict[str, Any], batches: list[Any], shipped: dict[str, Any]
) -> list[tuple[str, Callable[[], dict[str, QuantizedWeight]], str]]:
    """INT2 built in memory with the shipped variant's policy, group size and calibration, each of
    its choices undone in turn (method, zero points, which layers GPTQ runs on: ``shipped`` is its
    manifest's ``quantization``), and with `mobile-mm quantize --bits 2`'s former defaults (whole
    zero points, GPTQ everywhere; its defaults are the shipped INT2's since 2026-12-07): (label,
    build, note) for the rows the shipped INT2 is not. QAT (~8 min) is left out."""
    method = str(shipped["method"])
    zeros = str(shipped.get("zero_points", "whole"))
    rows = int(shipped.get("calibration", {}).get("min_rows_per_input", 0))
    other_zeros = "whole" if zeros == "free" else "free"
    other_rows = 0 if rows else MIN_ROWS_PER_INPUT
    former_defaults = ("gptq", "whole", 0)
    kinds = [("rtn", zeros, 0), ("gptq", other_zeros, rows), ("gptq", zeros, other_rows), former_defaults]
    same = "built in memory; same policy, group size and calibration as the shipped int2"
    out: list[tuple[str, Callable[[], dict[str, QuantizedWeight]], str]] = []
    for kind in dict.fromkeys(kinds):  # in order, without repeats
        if kind == (method, zeros, rows) or (kind[0] == "rtn" and method == "rtn"):
            continue
        how, zero_points, min_rows = kind
        if how == "rtn":
            label = f"ours int2 (rtn, {zero_points} zero points)"
            out.append((label, _rtn_builder(net, plan, zero_points), same))
            continue
        label = f"ours int2 (gptq, {zero_points} zero points, min rows {min_rows})"
        note = same + ("; `mobile-mm quantize --bits 2`'s former defaults" if kind == former_defaults else "")
        out.append((label, _gptq_builder(net, plan, batches, zero_points, min_rows), note))
    return out


def _rtn_builder(net: MultiModalNet, plan: dict[str, Any], zero_points: str) -> Callable[[], Any]:
    return lambda: quantize_rtn_layers(net, plan, zero_points=zero_points)


def _gptq_builder(
    net: MultiModalNet, plan: dict[str, Any], batches: list[Any], zero_points: str, min_rows: int
) -> Callable[[], Any]:
    return lambda: (
        quantize_gptq_layers(
            net, plan, batches, calibration_forward, min_rows_per_input=min_rows, zero_points=zero_points
        ).quantized
    )


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and pass/fail."""
    by = {r["name"].split(" (")[0]: r for r in results["rows"] if r["family"] == "ours"}
    fp32_size = results["fp32"]["size_bytes"]
    checks: dict[str, Any] = {}
    int2 = by.get("ours int2")
    if int2 is not None:
        checks["int2_size_at_most_a_tenth"] = {
            "value": int2["size_bytes"] / fp32_size,
            "pass": int2["size_bytes"] <= fp32_size / 10,
        }
    for q, target in TARGETS.items():
        row = by.get(f"ours {q}")
        if row is not None:
            checks[f"{q}_max_loss_at_most_{target}"] = {
                "value": row["max_accuracy_loss"],
                "pass": row["max_accuracy_loss"] <= target,
            }
    if int2 is not None:
        for r in results["rows"]:
            if r["family"] not in ("fp32", "ours", "ours-ablation") and r["bits"] == 2:
                checks[f"int2_loses_less_than_{r['name'].replace(' ', '_')}"] = {
                    "ours": int2["max_accuracy_loss"],
                    "peer": r["max_accuracy_loss"],
                    "pass": int2["max_accuracy_loss"] < r["max_accuracy_loss"],
                }
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--limit", type=int, default=1000, help="examples per task (same for every row)")
    parser.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per latency workload")
    parser.add_argument("--peers", default="quanto,hqq,onnxruntime")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false")
    parser.add_argument(
        "--wait-s",
        type=float,
        default=0.0,
        help="wait this long for variants a concurrent `mobile-mm quantize` is writing",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = set(args.peers) - set(peers.PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {sorted(peers.PEERS)}")
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md")
    write_plot(results, args.out / "results.png")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
