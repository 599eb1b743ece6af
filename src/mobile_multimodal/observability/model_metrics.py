"""Metrics about the loaded model, measured from it and read from its eval report.

- ``model_memory_usage_bytes{component}``: bytes of each component's parameters and buffers, as
  held in memory (packed if quantized), from ``model.component_memory_bytes()``, and
  ``kv_cache_peak``, the decoder's largest KV cache so far (the canary updates it; the fp32
  reference adds ``reference_model`` when loaded, serving/reference.py). A new model (a reload)
  sets what it holds and 0 for what the previous one held and it does not.
- ``model_accuracy_score{task}``: the primary metric of each task in the model's eval report
  (``manifest["eval"]``, the report ``mobile-mm eval --json`` prints).
- ``quantization_accuracy_loss{quantization_type, task}`` (and its alias): ``(fp32 primary −
  quantized primary) / fp32 primary``. The fp32 reference is the report of the directory the
  quantized variant lives in (``<model>/int2/`` beside ``<model>/manifest.json``), or a
  ``baseline_eval`` report embedded in the quantization section; an fp32 model loses 0 by definition.

Example::

    record_model(model, load_seconds=1.8, model_type="multimodal")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mobile_multimodal.observability import metrics

_log = logging.getLogger(__name__)


class LoadedModel(Protocol):
    """What this module needs of ``MobileMultiModalLLM`` (kept structural: no torch import here)."""

    quantization: str
    manifest: dict[str, Any]
    model_dir: Path | None

    def component_memory_bytes(self) -> dict[str, int]: ...

    def get_model_info(self) -> dict[str, Any]: ...


def primaries(report: Any) -> dict[str, float]:
    """task -> primary metric of an eval report; empty for anything that is not one."""
    if not isinstance(report, Mapping) or not isinstance(report.get("tasks"), Mapping):
        return {}
    out: dict[str, float] = {}
    for task, values in report["tasks"].items():
        if isinstance(values, Mapping) and isinstance(values.get("primary"), int | float):
            out[str(task)] = float(values["primary"])
    return out


def _fp32_reference(model: LoadedModel) -> dict[str, float]:
    section = model.manifest.get("quantization")
    if isinstance(section, Mapping) and primaries(section.get("baseline_eval")):
        return primaries(section.get("baseline_eval"))
    if model.model_dir is None:
        return {}
    parent_manifest = Path(model.model_dir).parent / "manifest.json"
    try:
        parent = json.loads(parent_manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    mode = parent.get("quantization", {}).get("mode", "fp32") if isinstance(parent, dict) else None
    return primaries(parent.get("eval")) if mode == "fp32" else {}


def accuracy_loss(quantized: Mapping[str, float], fp32: Mapping[str, float]) -> dict[str, float]:
    """Relative loss per task present in both reports (tasks with an fp32 score of 0 are skipped)."""
    return {t: (fp32[t] - q) / fp32[t] for t, q in quantized.items() if t in fp32 and fp32[t] != 0}


def record_model(model: LoadedModel, load_seconds: float, model_type: str) -> None:
    """Set every model gauge for a freshly loaded ``model``."""
    quant = model.quantization
    # One model per process: a reload replaces the previous model's series, so a task or a
    # quantization the new model lacks does not keep reporting the old one's numbers. (The
    # multiprocess client cannot clear labels; it warns instead.)
    # The canary's baseline and the shadow's agreement window belonged to the previous model too:
    # the new one's are set by its own canary run and comparisons.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        for gauge in (
            metrics.MODEL_ACCURACY,
            metrics.MODEL_ACCURACY_BASELINE,
            metrics.SHADOW_AGREEMENT,
            metrics.QUANTIZATION_LOSS,
            metrics.QUANTIZATION_LOSS_ALIAS,
            metrics.MODEL_INFO,
        ):
            gauge.clear()
    held = dict(model.component_memory_bytes())
    # The decoder's largest KV cache so far (the warm-up ran a full batch): memory beside the weights.
    peak_cache = kv_cache_peak_bytes(model)
    if peak_cache > 0:
        held["kv_cache_peak"] = peak_cache
    # What the previous model (and its fp32 reference, dropped with it) held and this one does
    # not is held no more: 0, not the old number (the reference sets its own once loaded again).
    for component in _reported_components(model_type) - set(held):
        metrics.MODEL_MEMORY.labels(model_type, component).set(0)
    for component, nbytes in held.items():
        metrics.MODEL_MEMORY.labels(model_type, component).set(nbytes)
    metrics.MODEL_LOAD_DURATION.labels(model_type, quant).set(load_seconds)
    # at 0 from the start, so a rate() sees the first flagged input (the scene tasks model/domain.py
    # checks; a model without a calibrated check never counts one)
    for task in ("captioning", "vqa", "retrieval"):
        metrics.OUT_OF_DOMAIN_INPUTS.labels(model_type, task)
    own = primaries(model.manifest.get("eval"))
    for task, score in own.items():
        metrics.MODEL_ACCURACY.labels(model_type, quant, task).set(score)
    if quant == "fp32":
        losses = dict.fromkeys(own, 0.0)
    else:
        losses = accuracy_loss(own, _fp32_reference(model))
        if own and not losses:
            _log.warning(
                "no fp32 eval report found to compare with: quantization_accuracy_loss not set",
                extra={"model_type": model_type, "quantization": quant},
            )
    for task, loss in losses.items():
        metrics.QUANTIZATION_LOSS.labels(quant, task).set(loss)
        metrics.QUANTIZATION_LOSS_ALIAS.labels(quant, task).set(loss)
    info = model.get_model_info()
    files = model.manifest.get("files") or []
    weights_sha = next(
        (f.get("sha256", "") for f in files if str(f.get("path", "")).endswith(".safetensors")), ""
    )
    metrics.MODEL_INFO.labels(
        str(info.get("name", "")),
        str(info.get("version", "")),
        quant,
        str(info.get("parameters", "")),
        str(info.get("size_bytes", "")),
        str(weights_sha),
        str(info.get("runtime", "pytorch")),
    ).set(1)


def kv_cache_peak_bytes(model: object) -> int:
    """The largest KV cache the model's decoder has held so far (0 for a model without one):
    PyTorch's decoder's, or an ONNX Runtime model's own ``peak_cache_bytes``."""
    decoder = getattr(getattr(model, "network", None), "decoder", None)
    peak = getattr(decoder, "peak_cache_bytes", None)
    if peak is None:
        peak = getattr(model, "peak_cache_bytes", 0)
    return peak if isinstance(peak, int) else 0


def _reported_components(model_type: str) -> set[str]:
    """The components ``model_memory_usage_bytes`` has a series for, for ``model_type``."""
    return {
        sample.labels["component"]
        for family in metrics.MODEL_MEMORY.collect()
        for sample in family.samples
        if sample.labels.get("model_type") == model_type
    }


def record_load_failure(reason: str, model_type: str) -> None:
    """Count a failed load; ``reason`` should be the ModelLoadError code (bounded)."""
    metrics.MODEL_LOAD_FAILURES.labels(model_type, reason).inc()
