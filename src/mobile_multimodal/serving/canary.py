"""Canary evaluation of the served model, while it serves.

At start-up (once the model is ready) and then every ``MOBILE_MM_CANARY_INTERVAL_S``, the
canary set (``training/canary_set.py``: ``MOBILE_MM_CANARY_SIZE`` fixed held-out examples per task)
is run through the served model in small slices between requests (``background_slices.py``):

* ``model_accuracy_score{model_type, quantization, task}``: the run's primary metric per task;
* ``model_accuracy_baseline_score``: what it is compared with (alert ModelCanaryAccuracyDrop):
  the model's manifest ``canary`` report (written for the release by ``evaluate_canary``), else,
  for a quantized model, the fp32 reference's score on the same canary;
* ``quantization_accuracy_loss`` (and its alias): ``(fp32 - served) / fp32`` on the canary, the
  fp32 reference (``reference.py``) loaded lazily and scored once (it never changes), 0 for an
  fp32 model;
* ``model_canary_runs_total{status}``, ``model_canary_last_success_timestamp_seconds``,
  ``model_canary_duration_seconds``, ``model_canary_interval_seconds`` and
  ``model_canary_started_timestamp_seconds`` (ModelCanaryStale);
  ``model_memory_usage_bytes{component="kv_cache_peak"}``.

Each run is a root span ``canary_run`` (attributes: the scores, slices, urgent slices) and one
JSON log line ``canary run`` (operation ``canary``, the scores, the losses, duration_ms). A run
that fails (the model raised) counts ``status="failure"`` and logs at ERROR; the loop goes on.

Example::

    canary = CanaryEvaluator(settings, engine, BackgroundSlices(engine), ReferenceModel(settings))
    report = await canary.run_once()       # {"scores": {...}, "losses": {...}, ...}
    await canary.run_forever()             # start-up run, then one per interval
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context

from mobile_multimodal.model.ctc_lm import ocr_decoding_of
from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.model_metrics import accuracy_loss, kv_cache_peak_bytes, primaries
from mobile_multimodal.observability.tracing import stage
from mobile_multimodal.serving.background_slices import BackgroundSlices
from mobile_multimodal.serving.engine import InferenceEngine, ServableModel
from mobile_multimodal.serving.reference import ReferenceModel
from mobile_multimodal.settings import Settings
from mobile_multimodal.training.canary_set import CanaryModel, CanaryRun, CanarySet

log = logging.getLogger(__name__)


@dataclass
class CanaryReport:
    scores: dict[str, float]
    baseline: dict[str, float]
    losses: dict[str, float]
    duration_s: float
    slices: int
    urgent_slices: int
    reference_scores: dict[str, float] = field(default_factory=dict)


class CanaryEvaluator:
    """Runs the canary on the engine's model; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        engine: InferenceEngine,
        slices: BackgroundSlices,
        reference: ReferenceModel,
        slice_size: int = 8,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.slices = slices
        self.reference = reference
        self.slice_size = slice_size
        self.canary: CanarySet | None = None
        self.reference_scores: dict[str, float] | None = None
        self.last_report: CanaryReport | None = None
        self.runs = 0

    async def run_forever(self) -> None:
        interval = self.settings.canary_interval_s
        metrics.CANARY_INTERVAL.set(interval)
        if interval <= 0:
            return  # 0: no canary
        metrics.CANARY_STARTED.set(time.time())
        while True:
            due = time.monotonic()
            await self.run_once(due=due)
            await asyncio.sleep(max(0.0, due + interval - time.monotonic()))

    async def run_once(self, due: float | None = None) -> CanaryReport | None:
        """One canary run; None if it failed (counted and logged)."""
        model = self.engine.model
        if model is None:
            return None
        due = time.monotonic() if due is None else due
        start = time.perf_counter()
        quant = model.quantization
        model_type = self.settings.model_type
        try:
            with stage("canary_run", {"model.quantization": quant}, Context()) as span:
                if self.canary is None:  # rendering the set is CPU work: off the model thread
                    self.canary = await asyncio.to_thread(CanarySet.build, self.settings.canary_size)
                before = (self.slices.slices_run, self.slices.urgent_slices)
                scores = await self._score(model, due)
                reference = await self._reference_scores(model, due)
                losses = dict.fromkeys(scores, 0.0) if quant == "fp32" else accuracy_loss(scores, reference)
                report = CanaryReport(
                    scores=scores,
                    baseline=self._baseline(model, reference),
                    losses=losses,
                    duration_s=time.perf_counter() - start,
                    slices=self.slices.slices_run - before[0],
                    urgent_slices=self.slices.urgent_slices - before[1],
                    reference_scores=reference,
                )
                for task, score in scores.items():
                    span.set_attribute(f"canary.{task}", score)
                span.set_attribute("canary.slices", report.slices)
                span.set_attribute("canary.urgent_slices", report.urgent_slices)
        except Exception as exc:  # a canary failure must never stop the service, only be seen
            metrics.CANARY_RUNS.labels("failure").inc()
            log.error(
                "canary run failed: %s: %s",
                type(exc).__name__,
                exc,
                extra={"operation": "canary", "model_type": model_type, "quantization": quant},
            )
            return None
        self._record(model, report)
        return report

    async def _score(self, model: ServableModel, due: float) -> dict[str, float]:
        assert self.canary is not None
        run = CanaryRun(self.canary, _as_canary_model(model), self.slice_size)
        for work in run.slices():
            await self.slices.run(work, urgent=self._overdue(due))
        return run.scores()

    async def _reference_scores(self, model: ServableModel, due: float) -> dict[str, float]:
        if model.quantization == "fp32":
            return {}
        if self.reference_scores is None:
            ref = await self.reference.get(model)
            if ref is None:
                return {}
            self.reference_scores = await self._score(ref, due)  # fixed weights: scored once
            self.reference.record_memory()  # its decodes' KV cache too
        return self.reference_scores

    def _overdue(self, due: float) -> bool:
        return time.monotonic() - due > max(self.settings.canary_interval_s, 1.0)

    def _baseline(self, model: ServableModel, reference: Mapping[str, float]) -> dict[str, float]:
        manifest = getattr(model, "manifest", None) or {}
        canary = manifest.get("canary") or {}
        own = primaries(canary)
        same_set = int(canary.get("size", 0)) == self.settings.canary_size
        # the release's OCR score holds for the decoding it was read with (reports from before
        # the field read greedily); served otherwise, the reference read the served way is the bar
        same_reading = canary.get("ocr_decoding", "greedy") == ocr_decoding_of(model)
        if own and same_set and same_reading:
            return own
        return dict(reference)

    def _record(self, model: ServableModel, report: CanaryReport) -> None:
        quant = model.quantization
        model_type = self.settings.model_type
        # Replaces the eval report's numbers set at load for the canary's tasks; the tasks it
        # does not cover (ocr_unseen_fonts, easy_vqa) keep the report's.
        self.runs += 1
        for task, score in report.scores.items():
            metrics.MODEL_ACCURACY.labels(model_type, quant, task).set(score)
        for task, base in report.baseline.items():
            metrics.MODEL_ACCURACY_BASELINE.labels(model_type, quant, task).set(base)
        for task, loss in report.losses.items():
            metrics.QUANTIZATION_LOSS.labels(quant, task).set(loss)
            metrics.QUANTIZATION_LOSS_ALIAS.labels(quant, task).set(loss)
        metrics.CANARY_RUNS.labels("success").inc()
        metrics.CANARY_LAST_SUCCESS.set(time.time())
        metrics.CANARY_DURATION.set(report.duration_s)
        peak = kv_cache_peak_bytes(model)
        if peak:
            metrics.MODEL_MEMORY.labels(model_type, "kv_cache_peak").set(peak)
        self.last_report = report
        log.info(
            "canary run",
            extra={
                "operation": "canary",
                "model_type": model_type,
                "quantization": quant,
                "duration_ms": round(report.duration_s * 1000, 1),
                "scores": {t: round(v, 4) for t, v in report.scores.items()},
                "baseline": {t: round(v, 4) for t, v in report.baseline.items()},
                "quantization_accuracy_loss": {t: round(v, 4) for t, v in report.losses.items()},
                "slices": report.slices,
                "urgent_slices": report.urgent_slices,
            },
        )


def _as_canary_model(model: Any) -> CanaryModel:
    """The served model has the canary's API (typed structurally on both sides)."""
    canary_model: CanaryModel = model
    return canary_model
