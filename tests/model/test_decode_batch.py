"""Continuous decoding (model/decode_batch.py, model/task_decoding.py): rows joining at different
steps get exactly what ``generate`` gives each prompt alone, with the bundled weights."""

from __future__ import annotations

import threading
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
import torch

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.decode_batch import DecodeBatch, DecodeRow
from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.model.quantized_layers import PackedWeight
from mobile_multimodal.model.task_decoding import TaskDecoding, TaskRequest

MAX_STEPS = 200  # every row ends within its budget (< 50 steps): a loop past this is a bug


@lru_cache(maxsize=2)
def _model(quantization: str) -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_pretrained("default", quantization=quantization)


def _requests() -> list[TaskRequest]:
    scenes = [e.image for e in load_eval_split("captioning", 6)]
    budgets = [32, 4, 12, 32, 9, 20]
    captions = [
        TaskRequest("captioning", img, n, domain=True, tag=f"c{i}")
        for i, (img, n) in enumerate(zip(scenes, budgets, strict=True))
    ]
    answers = [
        TaskRequest("vqa", e.image, 8, question=e.question, tag=f"v{i}")
        for i, e in enumerate(load_eval_split("vqa", 4))
    ]
    return captions + answers


def _alone(model: MobileMultiModalLLM, r: TaskRequest) -> tuple[str, float, float | None]:
    confidences: list[float] = []
    domain: list[float] = []
    if r.task == "captioning":
        [text] = model.generate_captions([r.image], r.max_tokens, confidences=confidences, domain=domain)
    else:
        [text] = model.answer_questions([r.image], [r.question or ""], r.max_tokens, confidences=confidences)
    return text, confidences[0], domain[0] if domain else None


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_rows_joining_at_different_steps_decode_as_they_would_alone(quantization: str) -> None:
    model = _model(quantization)
    requests = _requests()
    c, v = requests[:6], requests[6:]
    # captions and answers, long and short budgets, joining an empty batch and a running one
    joins = {0: [c[0]], 2: [v[0], c[1]], 3: [c[2], c[3], v[1]], 7: [c[4], c[5], v[2], v[3]]}
    decoding = TaskDecoding(model)
    got: dict[object, tuple[str, float, float | None]] = {}
    embedded: dict[object, np.ndarray] = {}
    most_rows = 0
    for step in range(MAX_STEPS):
        if step in joins:
            done, refused = decoding.admit(joins[step])
            assert not done and not refused
        most_rows = max(most_rows, len(decoding))
        for r in decoding.step():
            got[r.tag] = (r.text, r.confidence, r.domain_score)
            if r.domain_embedding is not None:  # the check's embedding, from the caption's own tokens
                embedded[r.tag] = r.domain_embedding
        if step > max(joins) and not len(decoding):
            break
    assert most_rows >= 5  # they did decode side by side
    assert len(decoding.batch.tags) == 0 and decoding.batch.columns == 0  # everything left
    for r in requests:
        text, confidence, domain = _alone(model, r)
        assert got[r.tag][0] == text, r.tag  # token for token
        assert got[r.tag][1] == pytest.approx(confidence, abs=1e-6)
        if domain is None:
            assert got[r.tag][2] is None and r.tag not in embedded
        else:
            assert got[r.tag][2] == pytest.approx(domain, abs=1e-6)
            np.testing.assert_allclose(embedded[r.tag], model.get_image_embeddings([r.image])[0], atol=1e-5)
    assert sorted(map(str, embedded)) == ["c0", "c3"]  # the captions of a 32-token budget


def test_a_row_leaves_and_a_join_shrinks_the_cache_to_the_rows_left() -> None:
    model = _model("fp32")
    decoder, tok = model.network.decoder, model.tokenizer
    batch = DecodeBatch(decoder, tok.eos_id, tok.pad_id)
    scene = load_eval_split("vqa", 1)[0]
    long_prompt = tok.prompt("vqa", "is there a large red circle at the top left of the image ?")
    short_prompt = tok.prompt("captioning")
    tokens, _ = model.network.encode_images(torch.stack([model._scenes([scene.image])[0]] * 2))
    batch.add([DecodeRow(long_prompt, 3, tag="long")], tokens[:1])
    batch.add([DecodeRow(short_prompt, 20, tag="short")], tokens[1:])
    assert batch.columns == len(long_prompt)  # the shorter row was padded on the left
    left: list[object] = []
    for step in range(1, MAX_STEPS):
        left += [r.tag for r in batch.step()]
        if left == ["long"] and len(batch) == 1:
            # a row joins: the finished row's tensors and the long prompt's leading columns go,
            # so only the caption's keys are held: its prompt and one token per step so far
            batch.add([DecodeRow(short_prompt, 1, tag="third")], tokens[1:])
            assert batch.columns == len(short_prompt) + step
        if not len(batch):
            break
    assert left[:2] == ["long", "third"] and sorted(left) == ["long", "short", "third"]


def test_a_stop_signal_ends_its_row_at_the_next_step_and_the_others_go_on() -> None:
    model = _model("fp32")
    requests = _requests()[:2]
    stop = threading.Event()
    requests[0].stop, requests[0].max_tokens = stop, 32
    decoding = TaskDecoding(model)
    decoding.admit(requests)
    decoding.step()
    stop.set()
    [stopped] = decoding.step()
    assert stopped.tag == "c0" and stopped.stopped and len(decoding) == 1
    rest: list[str] = []
    for _ in range(MAX_STEPS):
        rest += [r.text for r in decoding.step()]
        if not len(decoding):
            break
    assert rest == [_alone(model, requests[1])[0]]


def test_a_refused_request_is_refused_alone() -> None:
    model = _model("fp32")
    image = load_eval_split("vqa", 1)[0].image
    long_question = " ".join(["red"] * (model.max_question_tokens + 1))
    good = TaskRequest("captioning", image, 6, tag="good")
    decoding = TaskDecoding(model)
    done, refused = decoding.admit([TaskRequest("vqa", image, 8, question=long_question, tag="bad"), good])
    assert not done and list(refused) == [0] and isinstance(refused[0], PromptTooLongError)
    assert decoding.batch.tags == [good]
    batch = DecodeBatch(model.network.decoder, model.tokenizer.eos_id, model.tokenizer.pad_id)
    with pytest.raises(PromptTooLongError):
        batch.add([DecodeRow([1] * model.config.max_text_len, 4)], torch.zeros(1, 4, model.config.dim))
    assert len(batch) == 0  # nothing joined


def test_packed_layers_dequantize_once_per_batch_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("int2")
    calls: Counter[int] = Counter()
    real = PackedWeight._dequantize

    def counting(self: PackedWeight) -> torch.Tensor:
        calls[id(self)] += 1
        return real(self)

    monkeypatch.setattr(PackedWeight, "_dequantize", counting)
    requests = _requests()
    decoding = TaskDecoding(model)
    decoding.admit(requests[:2])
    for step in range(MAX_STEPS):
        if step == 3:
            decoding.admit(requests[6:8])  # a join mid-decode reuses the batch's weights too
        decoding.step()
        if step > 3 and not len(decoding):
            break
    decoder_layers = {id(m) for m in model.network.decoder.modules() if isinstance(m, PackedWeight)}
    assert decoder_layers
    # once in all (two admissions and a dozen steps), not once per step or per call
    assert {k: calls[k] for k in decoder_layers} == dict.fromkeys(decoder_layers, 1)
    assert decoding.batch._weights is None  # released when the batch emptied
