"""The runtime benchmark's report: results.md and results.png from results.json.

Regenerate both from a saved run (``results.json`` in DIR, default: beside this file)::

    .venv/bin/python -m benchmarks.runtime.report [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET = 3.0  # run.TARGET_PER_TOKEN_SPEEDUP (kept here too: the report imports nothing heavy)


def _load_line(machine: dict[str, Any]) -> str:
    start = machine.get("loadavg_at_start") or [0.0]
    end = machine.get("loadavg_at_end") or [0.0]
    return f"load average (1 min) {start[0]:.2f} at start, {end[0]:.2f} at end"


def markdown(result: dict[str, Any], notes: list[str] | None = None) -> str:
    m = result["machine"]
    opts = result["options"]
    lines = [
        "# Runtime benchmark: eager PyTorch vs ONNX Runtime (batch 1, in-process)",
        "",
        f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}, onnxruntime {m['onnxruntime']}; "
        f"{opts['threads']} intra-op thread(s) each; {opts['repeats']} repeats; {_load_line(m)}.",
        "",
        *[f"> {note}" for note in notes or []],
        *([""] if notes else []),
        f"Per-token decode target: ONNX Runtime at least {TARGET:g}x faster than PyTorch at the "
        "same precision. 'onnxruntime' is the backend as served (2-bit weights in 4-bit containers, "
        "exact; the KV cache in IO-bound buffers); 'onnxruntime_shipped' runs the bundle's bytes as "
        "a phone loads them; 'onnxruntime_float_weights' dequantizes the weights to float MatMuls at "
        "load (the fp32 model's memory; not served by default).",
        "",
        "| precision | runtime | PyTorch ms/token | runtime ms/token | speedup | target |",
        "|---|---|---|---|---|---|",
    ]
    for q, per in result["precisions"].items():
        tok = per["per_token"]
        for runtime in [r for r in tok if r != "pytorch"]:
            speedup = tok["pytorch"]["median_ms"] / tok[runtime]["median_ms"]
            verdict = "met" if speedup >= TARGET else "NOT met"
            lines.append(
                f"| {q} | {runtime} | {tok['pytorch']['median_ms']:.3f} | {tok[runtime]['median_ms']:.3f} | "
                f"{speedup:.2f}x | {verdict} |"
            )
    lines += [
        "",
        "Per request (whole model call, batch 1), median / p90 ms; identical = every runtime's "
        "output equal to PyTorch's:",
        "",
        "| precision | task | PyTorch | ONNX Runtime | speedup | shipped bytes | identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for q, per in result["precisions"].items():
        for task, t in per["tasks"].items():
            shipped = t.get("onnxruntime_shipped")
            lines.append(
                f"| {q} | {task} | {t['pytorch']['median_ms']:.2f} / {t['pytorch']['p90_ms']:.2f} | "
                f"{t['onnxruntime']['median_ms']:.2f} / {t['onnxruntime']['p90_ms']:.2f} | "
                f"{result['summary'][q]['task_speedup'][task]:.2f}x | "
                f"{'-' if shipped is None else format(shipped['median_ms'], '.2f')} | "
                f"{'yes' if t['identical_outputs'] else 'NO'} |"
            )
    batches = {q: per["batch"] for q, per in result["precisions"].items() if "batch" in per}
    if batches:
        lines += [
            "",
            "A full batch: captions of 16 held-out scenes in one call, median ms (both runtimes decode "
            "them together when the bundle's decoder_step takes a batch, as exported since "
            "`export/batch_decode.py`; before, ONNX Runtime ran them one after another):",
            "",
            "| precision | PyTorch | ONNX Runtime | speedup | identical |",
            "|---|---|---|---|---|",
            *[
                f"| {q} | {b['pytorch']['median_ms']:.1f} | {b['onnxruntime']['median_ms']:.1f} | "
                f"{b['pytorch']['median_ms'] / b['onnxruntime']['median_ms']:.2f}x | "
                f"{'yes' if b['identical_outputs'] else 'NO'} |"
                for q, b in batches.items()
            ],
        ]
    steps = {q: per for q, per in result["precisions"].items() if "step_us" in per}
    if steps:
        lines += [
            "",
            "Where a token's time goes on ONNX Runtime (`step_breakdown.py`): one `decoder_step` call "
            "(batch 1, IO-bound buffers, mid-answer) as served, with every weight matrix replaced by "
            "one float matrix per shape (all weights cache-resident: the step with weights that cost "
            "nothing to fetch or unpack), and with quantized weights dequantized to float MatMuls; "
            "the loop = per-token minus the served step (Python, the cache write, the token's pick). "
            "Microseconds, medians, the forms alternating:",
            "",
            "| precision | per token | served step | shared weights | weights' share | "
            "float weights | loop |",
            "|---|---|---|---|---|---|---|",
        ]
        for q, per in steps.items():
            st = per["step_us"]
            token_us = per["per_token"]["onnxruntime"]["median_ms"] * 1000
            share = 1 - st["shared_weights_us"] / st["served_us"]
            float_us = st.get("float_weights_us")
            lines.append(
                f"| {q} | {token_us:.0f} | {st['served_us']:.0f} | {st['shared_weights_us']:.0f} | "
                f"{share:.0%} | {'-' if float_us is None else format(float_us, '.0f')} | "
                f"{token_us - st['served_us']:.0f} |"
            )
    kernels = result.get("matmul_nbits_us")
    if kernels:
        k, n = kernels["shape"]
        lines += [
            "",
            f"ONNX Runtime's MatMulNBits on this CPU, (1, {k}) x ({k}, {n}), median microseconds "
            "(accuracy_level 4 quantizes the activations to int8; our bundles use level 0 and "
            "blocks of 16, the exact mapping of our groups of 80):",
            "",
            "| bits | block | accuracy_level | us |",
            "|---|---|---|---|",
            *[
                f"| {r['bits']} | {r['block']} | {r['accuracy_level']} | {r['median_us']:.0f} |"
                for r in kernels["rows"]
            ],
        ]
    served = result.get("served_weights_us")
    if served:
        k, n = served["shape"]
        lines += [
            "",
            f"A quantized bundle's weights as the server holds them, (M, {k}) x ({k}, {n}) per "
            "number of rows M (a decode batch), median microseconds: `packed` = the 4-bit "
            "MatMulNBits an INT2 server runs by default (its 2-bit codes widened), `float` = "
            "`MOBILE_MM_ONNX_WEIGHTS=float` (the same values as a float MatMul, the fp32 model's "
            "memory):",
            "",
            "| rows | packed us | float us | packed / float |",
            "|---|---|---|---|",
            *[
                f"| {r['rows']} | {r['packed_us']:.1f} | {r['float_us']:.1f} | "
                f"{r['packed_us'] / r['float_us']:.2f} |"
                for r in served["rows"]
            ],
        ]
    lines += [
        "",
        "Per-token decode = (caption at max_tokens=32 - the same caption at max_tokens=1) / (extra "
        "tokens), so image encoding and the prompt cancel out; the runtimes alternate (ABBA).",
        "",
    ]
    return "\n".join(lines)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    path.write_text(markdown(result, result.get("notes")))


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    precisions = list(result["precisions"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    runtimes = ["pytorch", "onnxruntime", "onnxruntime_shipped"]
    width = 0.27
    tasks = list(result["precisions"][precisions[0]]["tasks"])
    labels = [f"{q}\n{t}" for q in precisions for t in tasks]
    for i, runtime in enumerate(runtimes):
        offset = (i - 1) * width
        per_token = [
            result["precisions"][q]["per_token"].get(runtime, {}).get("median_ms", 0) for q in precisions
        ]
        left.bar([j + offset for j in range(len(precisions))], per_token, width, label=runtime)
        values = [
            result["precisions"][q]["tasks"][t].get(runtime, {}).get("median_ms", 0)
            for q in precisions
            for t in tasks
        ]
        right.bar([j + offset for j in range(len(labels))], values, width, label=runtime)
    right.set_xticks(range(len(labels)), labels, fontsize=7)
    left.set_xticks(range(len(precisions)), precisions)
    left.set_ylabel("ms per generated token (median)")
    left.set_title("Per-token decode")
    right.set_ylabel("ms per request (median)")
    right.set_title("Per request, batch 1")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else Path(__file__).resolve().parent
    result = json.loads((directory / "results.json").read_text())
    write_markdown(result, directory / "results.md")
    plot(result, directory / "results.png")


if __name__ == "__main__":
    main()
