"""The out-of-domain flag: natural photographs and empty images are flagged, in-domain scenes not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mobile_multimodal.data.natural_images import PHOTOS, empty_images, natural_photographs
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.domain import MANIFEST_KEY, DomainCheck


def test_a_model_without_a_threshold_claims_nothing(tiny_model: MobileMultiModalLLM) -> None:
    assert DomainCheck.from_manifest({}).flag(0.1) is None
    assert DomainCheck.from_manifest({MANIFEST_KEY: {"threshold": 0.9}}).flag(0.5) is True
    flags, scores, agreements = tiny_model.out_of_domain(empty_images()[:2])
    assert flags == [None, None] and scores == [] and agreements == []


def test_either_low_signal_flags_and_a_confidence_only_check_ignores_agreement() -> None:
    both = DomainCheck.from_manifest({MANIFEST_KEY: {"threshold": 0.8, "agreement_threshold": 0.9}})
    assert [both.flag(0.85, 0.95), both.flag(0.7, 0.95), both.flag(0.85, 0.5)] == [False, True, True]
    confidence_only = DomainCheck.from_manifest({MANIFEST_KEY: {"threshold": 0.8}})
    assert confidence_only.agreement_threshold is None and confidence_only.flag(0.85, -1.0) is False


def test_natural_photographs_come_from_scikit_image_and_are_seeded() -> None:
    a, b = natural_photographs(crops_per_photo=1), natural_photographs(crops_per_photo=1)
    assert len(a) == 2 * (len(PHOTOS) + 2)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


# The share of the 20 photographs and 11 blank canvases below that the bundled model must flag.
# Measured on the model retrained on users' kinds of images (issue 18), with both signals: 30 of
# 31 at fp32 (a page of text passes) and 26 at INT2 (four more photographs pass). Confidence
# alone flagged 29 and 25 (the saturated red canvas, which it reads as a large red rectangle,
# passed); the model before it, which had only seen scenes on white, flagged 30 and 31.
FLAGGED_AT_LEAST = {"fp32": 0.95, "int2": 0.8}


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_the_bundled_model_flags_photographs_and_empty_images_only(quantization: str) -> None:
    model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    entry = model.manifest[MANIFEST_KEY]
    assert entry["measured"]["held_out_scenes"]["flag_rate"] <= 0.01  # calibrated: tiny false-flag rate
    photos = natural_photographs(crops_per_photo=0)
    blanks = empty_images()[::5]
    scenes = [e.image for e in load_eval_split("retrieval", 48)]
    flags, scores, agreements = model.out_of_domain([*photos, *blanks, *scenes])
    n = len(photos) + len(blanks)
    flagged = sum(bool(f) for f in flags[:n])
    assert flagged >= FLAGGED_AT_LEAST[quantization] * n, list(zip(flags[:n], scores[:n], strict=True))
    assert sum(bool(f) for f in flags[n:]) <= 1
    assert float(np.median(scores[:n])) < 0.9 * float(np.median(scores[n:]))  # a clear margin
    assert len(agreements) == len(scores) and entry["agreement_threshold"] > 0


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_the_caption_agreement_flags_the_canvas_the_model_is_sure_of(quantization: str) -> None:
    """A saturated red canvas: the model confidently captions a large red rectangle (confidence
    passes), but the image's embedding does not match that caption (agreement flags it)."""
    model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    check = DomainCheck.from_manifest(model.manifest)
    red = Image.new("RGB", (300, 300), (220, 30, 30))
    [flag], [score], [agreement] = model.out_of_domain([red])
    assert check.threshold is not None and check.agreement_threshold is not None
    assert score >= check.threshold and agreement < check.agreement_threshold and flag is True


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_a_captions_own_decode_gives_the_checks_score(quantization: str) -> None:
    """Serving scores a caption request in its own decode (no second decode): the same score and
    caption, so the same flag, as the check's own decode the thresholds were calibrated with."""
    model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    images = [
        *natural_photographs(crops_per_photo=0)[:3],
        *[e.image for e in load_eval_split("captioning", 5)],
    ]
    _, separate, _ = model.out_of_domain(images)
    own: list[float] = []
    captions = model.generate_captions(images, max_tokens=32, domain=own)
    assert own == pytest.approx(separate, abs=1e-5)
    assert model.out_of_domain(images, own, captions) == model.out_of_domain(images)
    short: list[float] = []
    model.generate_captions(images, max_tokens=12, domain=short)
    assert short == []  # not the check's caption: serving falls back to the check's own decode


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
