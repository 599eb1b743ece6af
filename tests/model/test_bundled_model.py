"""The committed default model on a fixed set of held-out examples.

These are the first examples of each held-out split (seeds disjoint from training, OCR words
never trained on). The thresholds sit below what `mobile-mm eval` measured on the full splits
(README), so a broken checkpoint, tokenizer or preprocessing change fails here.
"""

from __future__ import annotations

from collections import Counter

import pytest

from mobile_multimodal.data.scenes import parse_caption_objects
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM

N = 40
# Floors for these 40 examples, set below the full-split scores in the README's eval report.
CAPTION_EXACT_OBJECTS = 0.9
OCR_SEEN = 0.65
OCR_UNSEEN = 0.65
VQA_FLOOR = {"vqa": 0.55, "easy_vqa": 0.75}
RETRIEVAL_FLOOR = 0.8


def test_captions_name_the_right_objects_and_colours(bundled_model: MobileMultiModalLLM) -> None:
    examples = load_eval_split("captioning", N)
    captions = bundled_model.generate_captions([e.image for e in examples])
    exact = 0
    for e, caption in zip(examples, captions, strict=True):
        assert e.scene is not None
        gold = Counter((o.size, o.color, o.shape) for o in e.scene.objects)
        exact += Counter(parse_caption_objects(caption)) == gold
    assert exact / N >= CAPTION_EXACT_OBJECTS, captions[:5]


def test_ocr_reads_held_out_words(bundled_model: MobileMultiModalLLM) -> None:
    for split, floor in (("ocr", OCR_SEEN), ("ocr_unseen_fonts", OCR_UNSEEN)):
        examples = load_eval_split(split, N)
        texts = bundled_model.extract_texts([e.image for e in examples])
        right = sum(t == e.text for t, e in zip(texts, examples, strict=True))
        assert right / N >= floor, (split, list(zip(texts, [e.text for e in examples], strict=True))[:8])


@pytest.mark.parametrize("split", ["vqa", "easy_vqa"])
def test_vqa_answers(bundled_model: MobileMultiModalLLM, split: str) -> None:
    examples = load_eval_split(split, N)
    answers = bundled_model.answer_questions([e.image for e in examples], [e.question for e in examples])
    right = sum(a == e.answer for a, e in zip(answers, examples, strict=True))
    assert right / N >= VQA_FLOOR[split]


def test_retrieval_finds_the_caption_of_its_scene(bundled_model: MobileMultiModalLLM) -> None:
    examples = load_eval_split("retrieval", N)
    img = bundled_model.get_image_embeddings([e.image for e in examples])
    txt = bundled_model.get_text_embeddings([e.text for e in examples])
    best = (img @ txt.T).argmax(axis=1)
    right = sum(examples[int(j)].text == e.text for j, e in zip(best, examples, strict=True))
    assert right / N >= RETRIEVAL_FLOOR


def test_manifest_carries_its_eval_report(bundled_model: MobileMultiModalLLM) -> None:
    report = bundled_model.get_model_info()["eval"]
    assert set(report["tasks"]) == {"captioning", "ocr", "ocr_unseen_fonts", "vqa", "easy_vqa", "retrieval"}
    assert bundled_model.manifest["data_version"]
