"""The out-of-domain flag: natural photographs and empty images are flagged, in-domain scenes not."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_multimodal.data.natural_images import PHOTOS, empty_images, natural_photographs
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.domain import MANIFEST_KEY, DomainCheck


def test_a_model_without_a_threshold_claims_nothing(tiny_model: MobileMultiModalLLM) -> None:
    assert DomainCheck.from_manifest({}).flag(0.1) is None
    assert DomainCheck.from_manifest({MANIFEST_KEY: {"threshold": 0.9}}).flag(0.5) is True
    flags, scores = tiny_model.out_of_domain(empty_images()[:2])
    assert flags == [None, None] and scores == []


def test_natural_photographs_come_from_scikit_image_and_are_seeded() -> None:
    a, b = natural_photographs(crops_per_photo=1), natural_photographs(crops_per_photo=1)
    assert len(a) == 2 * (len(PHOTOS) + 2)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_the_bundled_model_flags_photographs_and_empty_images_only(quantization: str) -> None:
    model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    entry = model.manifest[MANIFEST_KEY]
    assert entry["measured"]["held_out_scenes"]["flag_rate"] <= 0.01  # calibrated: tiny false-flag rate
    photos = natural_photographs(crops_per_photo=0)
    blanks = empty_images()[::5]
    scenes = [e.image for e in load_eval_split("retrieval", 48)]
    flags, scores = model.out_of_domain([*photos, *blanks, *scenes])
    n = len(photos) + len(blanks)
    assert sum(bool(f) for f in flags[:n]) >= n - 1, list(zip(flags[:n], scores[:n], strict=True))
    assert sum(bool(f) for f in flags[n:]) <= 1
    assert float(np.median(scores[:n])) < 0.85 * float(np.median(scores[n:]))  # a clear margin
