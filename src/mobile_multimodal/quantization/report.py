"""The quantization report: size, bits per weight, and per-task accuracy loss against fp32.

Accuracy loss of a task (DESIGN.md) = (fp32 primary − quantized primary) / fp32 primary, as a
fraction; it is what the ``quantization_accuracy_loss`` gauge exports.

Example::

    report = build_report(fp32_eval, q_eval, quantized, 3_076_447, manifest["quantization"])
    report["tasks"]["ocr"]    # {"fp32": 0.91, "quantized": 0.905, "accuracy_loss": 0.0055}
"""

from __future__ import annotations

from typing import Any

from mobile_multimodal.model.quantized_weight import QuantizedWeight

ALERT_THRESHOLD = 0.05  # the guide's alert: quantization_accuracy_loss > 5%


def bits_per_weight(
    quantized: dict[str, QuantizedWeight], fp32_params: int, file_bytes: int
) -> dict[str, Any]:
    """Stored bits per weight: over the quantized weights (codes + scales + zero points), per bit
    width, and over the whole model file (everything it stores, per fp32 parameter)."""
    by_bits: dict[str, list[int]] = {}
    for qw in quantized.values():
        numel = 1
        for d in qw.shape:
            numel *= d
        acc = by_bits.setdefault(str(qw.bits), [0, 0])
        acc[0] += 8 * qw.storage_bytes()
        acc[1] += numel
    bits = sum(a[0] for a in by_bits.values())
    weights = sum(a[1] for a in by_bits.values())
    return {
        "quantized_weights": round(bits / max(1, weights), 4),
        "by_bits": {
            k: {"weights": v[1], "bits_per_weight": round(v[0] / max(1, v[1]), 4)}
            for k, v in sorted(by_bits.items())
        },
        "model_file": round(8 * file_bytes / max(1, fp32_params), 4),
    }


def accuracy_losses(fp32: dict[str, Any], quantized: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """task -> fp32 primary, quantized primary, relative loss (tasks in both reports). The loss
    is None where fp32 scores 0: a relative loss is undefined there."""
    out = {}
    for task, q in quantized["tasks"].items():
        if task not in fp32["tasks"]:
            continue
        ref, got = float(fp32["tasks"][task]["primary"]), float(q["primary"])
        loss = (ref - got) / ref if ref else None
        out[task] = {"fp32": ref, "quantized": got, "accuracy_loss": loss, "n": int(q.get("n", 0))}
    return out


def worst_loss(tasks: dict[str, dict[str, Any]]) -> float:
    """The largest defined loss of ``accuracy_losses``' tasks (0.0 when none is defined)."""
    return max((t["accuracy_loss"] for t in tasks.values() if t["accuracy_loss"] is not None), default=0.0)


def build_report(
    fp32_eval: dict[str, Any],
    q_eval: dict[str, Any],
    quantized: dict[str, QuantizedWeight],
    fp32_params: int,
    section: dict[str, Any],
) -> dict[str, Any]:
    tasks = accuracy_losses(fp32_eval, q_eval)
    worst = worst_loss(tasks)
    return {
        "model": q_eval.get("model"),
        "quantization": section["mode"],
        "method": section["method"],
        "bits": section["bits"],
        "group_size": section["group_size"],
        "policy": section.get("policy"),
        "size_bytes": int(q_eval["size_bytes"]),
        "fp32_size_bytes": int(fp32_eval["size_bytes"]),
        "size_ratio": round(int(q_eval["size_bytes"]) / max(1, int(fp32_eval["size_bytes"])), 5),
        "bits_per_weight": bits_per_weight(quantized, fp32_params, int(q_eval["size_bytes"])),
        "parameters": fp32_params,
        "tasks": tasks,
        "max_accuracy_loss": worst,
        "alert_threshold": ALERT_THRESHOLD,
        "within_alert_threshold": worst <= ALERT_THRESHOLD,
    }


def format_report(report: dict[str, Any]) -> str:
    bpw = report["bits_per_weight"]
    lines = [
        f"{report['quantization']} ({report['method']}, group {report['group_size']}): "
        f"{report['size_bytes'] / 1e6:.3f} MB = {report['size_ratio']:.3f} x fp32; "
        f"{bpw['quantized_weights']:.3f} bits/weight (quantized weights), "
        f"{bpw['model_file']:.3f} (whole file)",
        f"{'task':<18}{'fp32':>9}{'quant':>9}{'loss':>9}{'n':>7}",
    ]
    for task, t in report["tasks"].items():
        loss = "n/a" if t["accuracy_loss"] is None else f"{t['accuracy_loss']:.2%}"
        lines.append(f"{task:<18}{t['fp32']:>9.4f}{t['quantized']:>9.4f}{loss:>9}{t['n']:>7}")
    return "\n".join(lines)
