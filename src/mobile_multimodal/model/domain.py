"""Out-of-domain check: does the image look like the world the model knows (shapes on a canvas)?

Two signals, both the model's own, each with a threshold calibrated on in-domain scenes; an
image is flagged when either is low:

1. **Confidence** (``score``): the geometric mean probability (unconstrained softmax) of the
   first ``SCORED_TOKENS`` greedy tokens of its caption. On the generator's scenes the bundled
   model scores about 0.92, on an empty canvas about 0.6 (it is unsure what to call the first
   object), on a natural photograph about 0.84 (the model before it, which had only seen white
   canvases: 0.59).
2. **Agreement** (``agreement``): the cosine between the image's retrieval embedding and the
   embedding of its own caption (of up to ``CAPTION_TOKENS``). On a scene the caption describes
   what the embedding sees (about 0.96); a photograph's or an empty canvas's caption is an
   invented scene the image's embedding does not match (about 0.92 and 0.79). It catches what
   confidence misses: a model sure of the wrong world, such as an empty red canvas read as a
   large red rectangle.

Each threshold is a low quantile of the signal over held-out in-domain scenes, calibrated per
model and precision (``training/domain_calibration.py``) and stored in the model manifest under
``domain_check`` (``threshold``, ``agreement_threshold``); a model without it is never flagged
(``threshold`` None), a manifest with only ``threshold`` checks confidence alone. It applies to
the scene tasks (captioning, vqa, retrieval); OCR lines are not scenes and are not checked.

A checked model also flags a **blank** image (``is_blank``: one flat colour, nothing drawn on
it) whatever its signals say: there is nothing in it to describe, and the model's signals on a
flat canvas sit in the tail of in-domain scenes' (a saturated red canvas reads as a confident
large red rectangle whose caption agreement lands near the threshold, above or below it with
the draw of the calibration scenes), so no threshold separates them reliably.

A caption decoded with a budget of at least ``CAPTION_TOKENS`` carries both signals (its own
confidence prefix, its own text, and the image's embedding from the image tokens it was decoded
from), so a served caption costs only its text's embedding and the image's embedding head.

Example::

    check = DomainCheck.from_manifest(model.manifest)
    flags, scores, agreements = check_images(model, check, images)   # [False, True, ...]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

PREFIX_TOKENS = 8
# A decode of PREFIX_TOKENS runs one step past its budget (so <eos> can end it): the confidence
# covers up to this many tokens of any caption at least PREFIX_TOKENS long.
SCORED_TOKENS = PREFIX_TOKENS + 1
# The caption whose embedding the image's is compared with: the default caption budget, so a
# served caption is that very caption.
CAPTION_TOKENS = 32
CHECKED_TASKS = ("captioning", "vqa", "retrieval")
MANIFEST_KEY = "domain_check"
# A blank image: at most BLANK_MAX_SHARE of its pixels (at BLANK_SIDE px) stray more than
# BLANK_TOLERANCE levels (of 255, any channel) from its median colour. JPEG noise on a flat
# canvas stays under the tolerance; the scene with the least drawn on it among the user-style
# split's 600 and 1,000 held-out ones has 0.13% of its pixels off its canvas's colour (measured),
# six times the share.
BLANK_TOLERANCE = 24
BLANK_MAX_SHARE = 0.0002
BLANK_SIDE = 256


class Checkable(Protocol):
    """What the check needs of a model: both runtimes offer it."""

    def generate_captions(
        self,
        images: list[Any],
        max_tokens: int = 32,
        stop: Any = None,
        confidences: list[float] | None = None,
        domain: list[float] | None = None,
        embeddings: list[np.ndarray] | None = None,
    ) -> list[str]: ...

    def get_image_embeddings(self, images: Sequence[Any]) -> np.ndarray: ...

    def get_text_embeddings(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class DomainCheck:
    threshold: float | None
    agreement_threshold: float | None = None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> DomainCheck:
        entry = manifest.get(MANIFEST_KEY) or {}
        return cls(_number(entry.get("threshold")), _number(entry.get("agreement_threshold")))

    def flag(self, score: float, agreement: float | None = None) -> bool | None:
        """True when either signal is under its threshold; None when the model has no threshold."""
        if self.threshold is None:
            return None
        bar = self.agreement_threshold
        return score < self.threshold or (bar is not None and agreement is not None and agreement < bar)


def is_blank(image: Any) -> bool:
    """True when ``image`` (PIL or an HxWxC / HxW uint8 array) is one flat colour: see
    ``BLANK_TOLERANCE``. Measured on a copy at most ``BLANK_SIDE`` px on its long side (box
    filter), so a large image costs no more than a small one."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    picture = picture.convert("RGB")
    if max(picture.size) > BLANK_SIDE:
        scale = BLANK_SIDE / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(picture, dtype=np.int16).reshape(-1, 3)
    colour = np.median(pixels, axis=0)
    strays = (np.abs(pixels - colour) > BLANK_TOLERANCE).any(axis=1)
    return bool(strays.mean() <= BLANK_MAX_SHARE)


def prefix_score(log_probs: Sequence[float]) -> float:
    """The confidence signal from a caption's token log-probabilities (its first SCORED_TOKENS;
    1.0 for a caption that emitted nothing, as the decoder scores one)."""
    head = list(log_probs[:SCORED_TOKENS])
    return math.exp(sum(head) / len(head)) if head else 1.0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class CaptionEvidence:
    """What a caption decode measured for the check: per image, its confidence score, its caption
    and its embedding (from the tokens the caption was decoded from)."""

    scores: list[float]
    captions: list[str]
    embeddings: list[np.ndarray]


def check_captions(model: Checkable, images: Sequence[Any], batch: int = 64) -> CaptionEvidence:
    """Each image's caption (``CAPTION_TOKENS``) and what its decode measured."""
    evidence = CaptionEvidence([], [], [])
    for i in range(0, len(images), batch):
        scores: list[float] = []
        embeddings: list[np.ndarray] = []
        part = list(images[i : i + batch])
        evidence.captions += model.generate_captions(
            part, max_tokens=CAPTION_TOKENS, domain=scores, embeddings=embeddings
        )
        evidence.scores += scores
        evidence.embeddings += embeddings or list(model.get_image_embeddings(part))
    return evidence


def caption_agreement(
    model: Checkable,
    images: Sequence[Any],
    captions: Sequence[str],
    embeddings: Sequence[np.ndarray] | None = None,
) -> list[float]:
    """Cosine of each image's embedding (``embeddings``, else computed) with its caption's (both
    L2-normalised)."""
    if not images:
        return []
    given = embeddings is not None and len(embeddings) == len(images)
    image = np.stack(list(embeddings or [])) if given else model.get_image_embeddings(list(images))
    text = model.get_text_embeddings(list(captions))
    return [float(v) for v in (image * text).sum(-1)]


def domain_signals(
    model: Checkable, images: Sequence[Any], batch: int = 64
) -> tuple[list[float], list[float]]:
    """Both signals of every image (what calibration measures), in batches of ``batch``."""
    scores: list[float] = []
    agreements: list[float] = []
    for i in range(0, len(images), batch):
        part = list(images[i : i + batch])
        evidence = check_captions(model, part, batch)
        scores += evidence.scores
        agreements += caption_agreement(model, part, evidence.captions, evidence.embeddings)
    return scores, agreements


def check_images(
    model: Checkable,
    check: DomainCheck,
    images: Sequence[Any],
    scores: Sequence[float] | None = None,
    captions: Sequence[str] | None = None,
    embeddings: Sequence[np.ndarray] | None = None,
) -> tuple[list[bool | None], list[float], list[float]]:
    """Per image: flagged (None without a threshold; a blank image, ``is_blank``, always), its
    score and its agreement (empty lists without a threshold; agreements empty when the check is
    confidence alone). ``scores``, ``captions`` (and ``embeddings``) from a caption's own decode
    (budget of at least ``CAPTION_TOKENS``) save the check's decode; otherwise it decodes the
    captions itself."""
    if check.threshold is None:
        return [None] * len(images), [], []
    if scores is None or captions is None or len(scores) != len(images):
        evidence = check_captions(model, images)
        scores, captions, embeddings = evidence.scores, evidence.captions, evidence.embeddings
    scores = list(scores)
    blank = [is_blank(image) for image in images]
    if check.agreement_threshold is None:
        return [b or check.flag(s) for s, b in zip(scores, blank, strict=True)], scores, []
    agreements = caption_agreement(model, images, captions, embeddings)
    flags = [b or check.flag(s, a) for s, a, b in zip(scores, agreements, blank, strict=True)]
    return flags, scores, agreements
