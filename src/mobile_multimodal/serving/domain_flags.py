"""Mark a batch's results out of domain: a natural photograph or an empty image sent to a scene
task comes back with ``"out_of_domain": true``, its low ``domain_score`` (confidence) and its
``domain_agreement`` (its caption against its embedding) instead of passing as a confident
invented scene (``model/domain.py`` says how both are computed and where the thresholds come
from). Runs on the model thread, right after the batch's own forward pass.

A model without the check (no calibrated threshold in its manifest, or a runtime that does not
offer ``out_of_domain``) leaves the results as they are: the fields are absent, not false.

Example::

    results = _run_jobs(model, key, jobs)
    annotate(model, "captioning", images, results)
    results[0]   # {"caption": "...", "out_of_domain": True, "domain_score": 0.58, "domain_agreement": 0.71}

The request pipeline counts flagged inputs per task (``model_out_of_domain_inputs_total``).
"""

from __future__ import annotations

from typing import Any

from mobile_multimodal.model.domain import CHECKED_TASKS


def annotate(
    model: Any,
    task: str,
    images: list[Any],
    results: list[dict[str, Any]],
    tasks: str | tuple[str, ...] = CHECKED_TASKS,
    scores: list[float] | None = None,
    embeddings: list[Any] | None = None,
) -> None:
    """``tasks``: the tasks checked (``MOBILE_MM_DOMAIN_CHECK_TASKS``); ``scores`` (and the
    images' ``embeddings``): measured by the batch's own caption decode, whose captions are in
    ``results`` (else the model decodes the check's captions itself)."""
    check = getattr(model, "out_of_domain", None)
    checked = tasks.split(",") if isinstance(tasks, str) else tasks
    if task not in CHECKED_TASKS or task not in checked or check is None or not images:
        return
    if scores and task == "captioning":
        flags, scores, agreements = check(images, scores, [r["caption"] for r in results], embeddings or None)
    else:
        flags, scores, agreements = check(images)
    if not scores:  # no calibrated threshold: nothing is claimed
        return
    for i, (result, flag, score) in enumerate(zip(results, flags, scores, strict=True)):
        result["out_of_domain"] = bool(flag)
        result["domain_score"] = round(float(score), 6)
        if agreements:
            result["domain_agreement"] = round(float(agreements[i]), 6)
