"""Out-of-domain check: does the image look like the world the model knows (shapes on a canvas)?

The signal is the model's own belief in what it sees: the confidence (geometric mean of the
greedy tokens' probabilities, unconstrained softmax) of the first ``PREFIX_TOKENS`` tokens of
its caption of the image. On the generator's scenes the bundled model scores about 0.92, on an
empty canvas about 0.6 (it is unsure what to call the first object) and on a natural photograph
about 0.84 (the model before it, which had only seen white canvases: 0.96 and 0.59). A score under
the model's calibrated ``threshold`` flags the input as out of domain.

The threshold is calibrated per model and precision (``training/domain_calibration.py``) as a
low quantile of the scores of held-out in-domain scenes, and stored in the model manifest under
``domain_check``; a model without it is never flagged (``threshold`` None). It applies to the
scene tasks (captioning, vqa, retrieval); OCR lines are not scenes and are not checked.

Example::

    check = DomainCheck.from_manifest(model.manifest)
    scores = domain_scores(model, images)
    [check.flag(s) for s in scores]      # [False, True, None ...] (None: no threshold)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

PREFIX_TOKENS = 8
# A decode of PREFIX_TOKENS runs one step past its budget (so <eos> can end it): its score covers
# up to this many tokens, and a longer caption's first SCORED_TOKENS give the very same score.
SCORED_TOKENS = PREFIX_TOKENS + 1
CHECKED_TASKS = ("captioning", "vqa", "retrieval")
MANIFEST_KEY = "domain_check"


class Captioner(Protocol):
    def generate_captions(
        self,
        images: list[Any],
        max_tokens: int = 32,
        stop: Any = None,
        confidences: list[float] | None = None,
    ) -> list[str]: ...


@dataclass(frozen=True)
class DomainCheck:
    threshold: float | None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> DomainCheck:
        entry = manifest.get(MANIFEST_KEY) or {}
        value = entry.get("threshold")
        return cls(threshold=float(value) if isinstance(value, int | float) else None)

    def flag(self, score: float) -> bool | None:
        """True when ``score`` is under the threshold; None when the model has no threshold."""
        return None if self.threshold is None else score < self.threshold


def domain_scores(model: Captioner, images: Sequence[Any], batch: int = 64) -> list[float]:
    """The in-domain score of each image (see the module doc), in batches of ``batch``."""
    scores: list[float] = []
    for i in range(0, len(images), batch):
        part: list[float] = []
        model.generate_captions(list(images[i : i + batch]), max_tokens=PREFIX_TOKENS, confidences=part)
        scores.extend(part)
    return scores
