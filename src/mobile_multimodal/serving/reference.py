"""The fp32 reference of a quantized served model, loaded lazily, its memory reported.

A quantized variant lives in ``<model>/<quantization>/`` beside the fp32 release it was made
from (``model/llm.py``'s ``resolve_model_dir``); that release, loaded and verified like any
model, is the reference the canary measures ``quantization_accuracy_loss`` against and the
shadow comparison replays live requests through. An fp32 served model needs none (its loss is
0 by definition, and replaying it through itself would compare nothing). The reference is
loaded only when first needed, off the model thread (it must not hold requests up), once;
``model_memory_usage_bytes{component="reference_model"}`` then says what it costs: its weights
and the largest KV cache its decodes have held (:meth:`ReferenceModel.record_memory`, after each
canary scoring and shadow replay).
The reference is always PyTorch: served on ONNX Runtime (an INT2 bundle), the canary's loss and
the shadow's agreement measure the phone's runtime and precision against our fp32 model.

Example::

    reference = ReferenceModel(settings)
    ref = await reference.get(served_model)   # None for an fp32 model or without an fp32 parent
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from mobile_multimodal.model import MobileMultiModalLLM, checkpoint
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.model_metrics import kv_cache_peak_bytes
from mobile_multimodal.observability.tracing import stage
from mobile_multimodal.serving.engine import ServableModel
from mobile_multimodal.settings import Settings

log = logging.getLogger(__name__)


def reference_dir(model: ServableModel) -> Path | None:
    """The fp32 release a quantized ``model`` was made from, or None (fp32, or none on disk)."""
    if model.quantization == "fp32":
        return None
    # a model served by another runtime (an ONNX bundle) names the PyTorch release it came from
    model_dir = getattr(model, "source_model_dir", None) or getattr(model, "model_dir", None)
    if model_dir is None:
        return None
    parent = Path(model_dir).parent
    try:
        manifest = checkpoint.read_manifest(parent)
    except ModelLoadError:
        return None
    mode = manifest.get("quantization", {}).get("mode", "fp32")
    return parent if mode == "fp32" else None


class ReferenceModel:
    """Loads the fp32 reference once, on first :meth:`get`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: MobileMultiModalLLM | None = None
        self.unavailable: str | None = None  # why there is none, once we know
        self._lock = asyncio.Lock()

    async def get(self, served: ServableModel) -> MobileMultiModalLLM | None:
        if self.model is None and self.unavailable is None:
            async with self._lock:
                if self.model is None and self.unavailable is None:
                    await self._load(served)
        if self.model is not None:
            # read text lines as the served model does (the same charset: its fp32 parent), so
            # a loss is the quantization's, not a decoding's (MOBILE_MM_OCR_DECODING, a reload)
            self.model.ocr_reader = getattr(served, "ocr_reader", None)
        return self.model

    async def _load(self, served: ServableModel) -> None:
        directory = reference_dir(served)
        if directory is None:
            self.unavailable = (
                "the served model is fp32"
                if served.quantization == "fp32"
                else "no fp32 release beside the quantized model"
            )
            log.info("no fp32 reference: %s", self.unavailable)
            return
        start = time.perf_counter()
        try:
            with stage("reference_model_load", {"model.dir": str(directory)}):
                model = await asyncio.to_thread(self._load_sync, directory, served)
        except (ModelLoadError, OSError, RuntimeError) as exc:
            self.unavailable = f"cannot load the fp32 reference at {directory}: {exc}"
            log.error("%s", self.unavailable)
            return
        self.model = model
        held = self.record_memory()
        log.info(
            "fp32 reference loaded",
            extra={
                "operation": "reference_model_load",
                "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                "memory_mb": round(held / 2**20, 2),
            },
        )

    def record_memory(self) -> int:
        """Set ``reference_model``'s memory (weights + KV cache peak) and return it; 0 if none."""
        if self.model is None:
            return 0
        held = sum(self.model.component_memory_bytes().values()) + kv_cache_peak_bytes(self.model)
        metrics.MODEL_MEMORY.labels(self.settings.model_type, "reference_model").set(held)
        return held

    @staticmethod
    def _load_sync(directory: Path, served: Any) -> MobileMultiModalLLM:
        model = MobileMultiModalLLM.from_pretrained(directory, quantization="fp32")
        device = getattr(served, "device", None)
        if device is not None and str(device) != "cpu":
            model.to(device)
        return model
