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


# The share of the 20 photographs and 11 blank canvases below that the bundled model must flag.
# Measured on the model retrained on users' kinds of images (issue 18): 29 of 31 at fp32 (a page
# of text and the saturated red canvas, which it reads as a large red rectangle, pass) and 25 at
# INT2 (four more photographs pass). The model before it, which had only seen scenes on white,
# flagged 30 and 31: the retrained model is surer of what it sees in a photograph.
FLAGGED_AT_LEAST = {"fp32": 0.9, "int2": 0.75}


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
    flagged = sum(bool(f) for f in flags[:n])
    assert flagged >= FLAGGED_AT_LEAST[quantization] * n, list(zip(flags[:n], scores[:n], strict=True))
    assert sum(bool(f) for f in flags[n:]) <= 1
    assert float(np.median(scores[:n])) < 0.9 * float(np.median(scores[n:]))  # a clear margin


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_a_captions_own_decode_gives_the_checks_score(quantization: str) -> None:
    """Serving scores a caption request in its own decode (no second decode): the same score, so
    the same flag, as the separate 8-token check the threshold was calibrated with."""
    model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    images = [
        *natural_photographs(crops_per_photo=0)[:3],
        *[e.image for e in load_eval_split("captioning", 5)],
    ]
    _, separate = model.out_of_domain(images)
    own: list[float] = []
    model.generate_captions(images, max_tokens=32, domain=own)
    assert own == pytest.approx(separate, abs=1e-5)
    assert model.out_of_domain(images, own) == model.out_of_domain(images)
    short: list[float] = []
    model.generate_captions(images, max_tokens=4, domain=short)
    assert short == []  # too short to score: serving falls back to the separate check


def test_prefix_scores_agree_between_the_cached_and_uncached_decoder(tiny_model: MobileMultiModalLLM) -> None:
    import torch

    net, tok = tiny_model.network, tiny_model.tokenizer
    images = [e.image for e in load_eval_split("captioning", 3)]
    with torch.inference_mode():
        image_tokens, _ = net.encode_images(tiny_model._scenes(images))
        runs = []
        for use_cache in (True, False):
            prefix: list[float] = []
            out = net.decoder.generate(
                [tok.prompt("captioning")] * 3,
                image_tokens,
                12,
                tok.eos_id,
                tok.pad_id,
                use_cache=use_cache,
                prefix_scores=(4, prefix),
            )
            runs.append((out, prefix))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == pytest.approx(runs[1][1], abs=1e-4)
    assert all(p < 0 for p in runs[0][1])
