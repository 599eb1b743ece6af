"""Validation of an exported bundle in its own runtime, against the PyTorch model.

Two checks on the same fixed held-out subset (the first ``examples`` of each eval split,
``data/splits.py``), scored by the eval report's own code (``training/evaluate.py``):

- task accuracy: the bundle, driven through ``decode.BundleModel`` from its description files,
  and the PyTorch model at the same precision (``reference``); an exported task below its
  reference by more than ``ACCURACY_TOLERANCE`` (relative) fails the export;
- numerics: every graph call made during that run is replayed through the PyTorch graph module
  (``graphs.GraphSpec``) and the largest absolute output difference is recorded per graph; above
  ``MAX_ABS_DIFF_LIMIT`` the export fails.

Example::

    result = validate_bundle(model, graphs, bundle, runner, examples=32)
    result.validation["tasks"]        # {'captioning': 6.7, 'ocr': 0.94, ...}
    result.failures                   # [] when the export may ship
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from mobile_multimodal.data.easyvqa import EasyVQAUnavailable, load_easy_vqa
from mobile_multimodal.export.decode import Bundle, BundleModel
from mobile_multimodal.export.formats import GraphRunner
from mobile_multimodal.export.graphs import GraphSpec
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.training.evaluate import TASKS, evaluate_loaded

DEFAULT_EXAMPLES = 32  # per task; the export benchmark runs the full splits
ACCURACY_TOLERANCE = 0.02  # relative: a task may score at most 2 % below PyTorch's
MAX_ABS_DIFF_LIMIT = 1e-2  # logits, log-probs, embeddings: |runtime - PyTorch|
CALLS_COMPARED = 8  # graph calls replayed through PyTorch, per graph


@dataclass
class ValidationResult:
    validation: dict[str, Any]  # the manifest's "validation" section
    failures: list[str] = field(default_factory=list)


class _CallRecorder:
    """Keeps the first few inputs/outputs of each graph run by the bundle."""

    def __init__(self, per_graph: int) -> None:
        self.per_graph = per_graph
        self.calls: dict[str, list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]] = {}

    def __call__(self, graph: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        kept = self.calls.setdefault(graph, [])
        if len(kept) < self.per_graph:
            kept.append(({k: v.copy() for k, v in inputs.items()}, {k: v.copy() for k, v in outputs.items()}))


def graph_differences(graphs: Sequence[GraphSpec], recorder: _CallRecorder) -> dict[str, float]:
    """Graph name -> max |runtime output - PyTorch output| over the recorded calls."""
    diffs: dict[str, float] = {}
    for spec in graphs:
        worst = 0.0
        for inputs, outputs in recorder.calls.get(spec.name, []):
            with torch.no_grad():
                ref = spec.module(*(torch.from_numpy(inputs[n]) for n in spec.input_names))
            refs = ref if isinstance(ref, tuple) else (ref,)
            for name, r in zip(spec.output_names, refs, strict=True):
                worst = max(worst, float(np.abs(outputs[name] - r.numpy()).max()))
        if spec.name in recorder.calls:
            diffs[spec.name] = worst
    return diffs


def _available_tasks(tasks: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The tasks whose held-out data is here (easy-VQA ships in an optional wheel)."""
    skipped: dict[str, str] = {}
    if "easy_vqa" in tasks:
        try:
            load_easy_vqa("test")
        except EasyVQAUnavailable as exc:
            skipped["easy_vqa"] = str(exc)
    return [t for t in tasks if t not in skipped], skipped


class _Timed:
    """Proxies a model and adds up the seconds spent in its inference methods (not in the data
    generation or the metrics around them)."""

    METHODS = (
        "generate_captions",
        "answer_questions",
        "extract_texts",
        "get_image_embeddings",
        "get_text_embeddings",
    )

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.model, name)
        if name not in self.METHODS:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def _timed_report(
    model: Any, examples: int | None, tasks: Sequence[str]
) -> tuple[dict[str, Any], dict[str, float]]:
    """The eval report over ``tasks``, and each task's mean inference seconds per example."""
    report: dict[str, Any] = {"tasks": {}}
    latency: dict[str, float] = {}
    for task in tasks:
        timed = _Timed(model)
        part = evaluate_loaded(cast(MobileMultiModalLLM, timed), examples, [task])
        report["tasks"].update(part["tasks"])
        latency[task] = timed.seconds / max(1, int(part["tasks"][task]["n"]))
    return report, latency


def _primaries(report: dict[str, Any]) -> dict[str, float]:
    return {task: float(r["primary"]) for task, r in report["tasks"].items()}


def validate_bundle(
    model: MobileMultiModalLLM,
    graphs: Sequence[GraphSpec],
    bundle: Bundle,
    runner: GraphRunner,
    *,
    runtime: str,
    examples: int | None = DEFAULT_EXAMPLES,
    tasks: Sequence[str] = TASKS,
    tolerance: float = ACCURACY_TOLERANCE,
    max_abs_diff_limit: float = MAX_ABS_DIFF_LIMIT,
) -> ValidationResult:
    """Run the bundle and the PyTorch model on the same held-out subset (``examples`` per task;
    None: the full splits) and compare."""
    run_tasks, skipped = _available_tasks(tasks)
    recorder = _CallRecorder(CALLS_COMPARED)
    exported = BundleModel(bundle, runner, on_run=recorder)
    # BundleModel has every method the eval report calls on a model (duck-typed on purpose: the
    # report's metrics are the project's one implementation and must score both sides alike)
    report, latency = _timed_report(exported, examples, run_tasks)
    reference, ref_latency = _timed_report(model, examples, run_tasks)
    scores, ref_scores = _primaries(report), _primaries(reference)
    diffs = graph_differences(graphs, recorder)
    max_diff = max(diffs.values(), default=0.0)
    failures = [
        f"{task}: {scores[task]:.4f} in {runtime} vs {ref_scores[task]:.4f} in PyTorch"
        for task in run_tasks
        if scores[task] < ref_scores[task] * (1 - tolerance) - 1e-12
    ]
    if not max_diff <= max_abs_diff_limit:  # NaN fails too
        worst = max(diffs, key=lambda g: diffs[g])
        failures.append(f"graph {worst}: max |{runtime} - PyTorch| = {max_diff:.3g} > {max_abs_diff_limit:g}")
    validation: dict[str, Any] = {
        "executed": True,
        "runtime": runtime,
        "max_abs_diff": max_diff,
        "tasks": scores,
        "reference": ref_scores,
        "max_abs_diff_by_graph": diffs,
        # mean seconds per example of each task, batch 1 in the runtime; PyTorch's (batched as
        # the eval report batches, one thread: pipeline._one_torch_thread) beside it, same run
        "latency_s": latency,
        "reference_latency_s": ref_latency,
        "examples_per_task": {task: int(r["n"]) for task, r in report["tasks"].items()},
        "tolerance": {"accuracy_relative": tolerance, "max_abs_diff": max_abs_diff_limit},
        "passed": not failures,
    }
    if skipped:
        validation["skipped"] = skipped
    return ValidationResult(validation, failures)


def not_executed(runtime: str, reason: str, inspection: dict[str, Any]) -> ValidationResult:
    """The validation section of a format whose runtime cannot execute here (Core ML on Linux)."""
    return ValidationResult(
        {
            "executed": False,
            "runtime": runtime,
            "reason": reason,
            "max_abs_diff": None,
            "tasks": {},
            "reference": {},
            "inspection": inspection,
            "passed": True,
        }
    )
