"""Calibrate a model's out-of-domain thresholds (``model/domain.py``) and measure them.

Each signal's threshold (confidence, caption agreement) is its ``quantile`` (default 0.5%) over
2,000 of the generator's held-out scenes: the first 1,000 of the captioning split and the first
1,000 of the VQA split (their images), which training never draws (``data/splits.py``). A 0.5%
quantile of 500 scenes, as fitted before, is their third-lowest value: the thresholds moved with
that draw (on one variant the union of the two flagged 1.3% of other held-out scenes, on others
0.8%). The check (either signal low, or a blank image) is then measured on data it was not
fitted on: the held-out retrieval scenes (1,000 other seeds: the false-flag rate, which must
stay under 1%), the user-style scenes (what share of users' drawings the model admits it cannot
read), natural photographs (scikit-image's samples and crops of them) and empty canvases (both
should all be flagged), with what each signal alone and the blank test alone would flag.
``--write`` stores the entry in the model's manifest (``domain_check``), where serving and the
export bundle read it.

Example::

    python -m mobile_multimodal.training.domain_calibration --model default --quantization int2 --write
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mobile_multimodal.data.natural_images import empty_images, natural_photographs
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.data.user_style import load_user_split
from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.domain import (
    BLANK_MAX_SHARE,
    BLANK_SIDE,
    BLANK_TOLERANCE,
    CAPTION_TOKENS,
    MANIFEST_KEY,
    SCORED_TOKENS,
    domain_signals,
    is_blank,
)
from mobile_multimodal.model.llm import MobileMultiModalLLM, resolve_model_dir

QUANTILE = 0.005
FIT_SPLITS = ("captioning", "vqa")  # their first n images each; training never draws them
MEASURE_SPLIT = "retrieval"  # other held-out seeds: the false-flag rate


def calibrate(model: MobileMultiModalLLM, quantile: float = QUANTILE, n: int = 1000) -> dict[str, Any]:
    """The ``domain_check`` manifest entry: thresholds (fitted on ``n`` images of each of
    ``FIT_SPLITS``) and what the check flags on each kind of input."""
    fit_images = [e.image for split in FIT_SPLITS for e in load_eval_split(split, n)]
    fit_scores, fit_agreements = domain_signals(model, fit_images)
    threshold = float(np.quantile(fit_scores, quantile))
    agreement_threshold = float(np.quantile(fit_agreements, quantile))
    sets = {
        "held_out_scenes": [e.image for e in load_eval_split(MEASURE_SPLIT, n)],
        "user_style_scenes": [e.image for e in load_user_split("user_captioning")],
        "natural_photographs": natural_photographs(),
        "empty_images": empty_images(),
    }
    measured = {}
    for name, images in sets.items():
        signals = domain_signals(model, images)
        scores, agreements = (np.asarray(x) for x in signals)
        unsure, disagree = scores < threshold, agreements < agreement_threshold
        blank = np.array([is_blank(image) for image in images])
        measured[name] = {
            "n": len(images),
            "flag_rate": float((unsure | disagree | blank).mean()),
            "flag_rate_confidence_alone": float(unsure.mean()),
            "flag_rate_agreement_alone": float(disagree.mean()),
            "flag_rate_blank_alone": float(blank.mean()),
            "median_score": float(np.median(scores)),
            "median_agreement": float(np.median(agreements)),
        }
    return {
        "threshold": threshold,
        "agreement_threshold": agreement_threshold,
        "signal": f"confidence of the first {SCORED_TOKENS} caption tokens (geometric mean probability)",
        "agreement_signal": f"cosine of the image's embedding with its caption's ({CAPTION_TOKENS} tokens)",
        "blank_signal": (
            f"one flat colour: at most {BLANK_MAX_SHARE:.2%} of its pixels (at {BLANK_SIDE} px) more "
            f"than {BLANK_TOLERANCE} levels off its median colour"
        ),
        "fitted_on": {"splits": list(FIT_SPLITS), "n": len(fit_scores), "quantile": quantile},
        "measured": measured,
    }


def write_entry(model_dir: Path, entry: dict[str, Any]) -> None:
    manifest = checkpoint.read_manifest(model_dir)
    manifest[MANIFEST_KEY] = entry
    checkpoint.write_manifest(model_dir, manifest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="fp32")
    parser.add_argument("--write", action="store_true", help="store the entry in the model's manifest")
    args = parser.parse_args(argv)
    model = MobileMultiModalLLM.from_pretrained(args.model, quantization=args.quantization)
    entry = calibrate(model)
    if args.write:
        write_entry(resolve_model_dir(args.model, args.quantization), entry)
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
