"""The model defends its own context: prompts over the limit are refused before any tensor is
built (a ValueError naming the limit, never an IndexError), generation never runs past the
context, and a stop signal ends a row's decoding at its next token."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_multimodal.data.scenes import render_scene, sample_scene
from mobile_multimodal.model import MobileMultiModalLLM, Tokenizer
from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.model.preprocess import scene_tensor

NEVER = -1  # an eos id the decoder can never produce: every row runs to its budget


def _scene() -> Image.Image:
    return render_scene(sample_scene(np.random.default_rng(0)))


def _image_tokens(model: MobileMultiModalLLM, n: int = 1) -> torch.Tensor:
    tokens, _ = model.network.encode_images(torch.stack([scene_tensor(_scene())] * n))
    return tokens


class StepCounter:
    """Counts decoder steps (one ``logits`` call each: the prompt's pass, then one per token) and
    sets ``stop_after`` (if given) at the end of step ``at``, as another thread would."""

    def __init__(self, model: MobileMultiModalLLM, at: int = 0) -> None:
        self.calls = 0
        self.at = at
        self.stop = threading.Event()
        self._handle = model.network.decoder.norm.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1
        if self.calls == self.at:
            self.stop.set()

    def close(self) -> None:
        self._handle.remove()


def test_tokenizer_count_matches_encode_and_stops_early() -> None:
    tok = Tokenizer.default()
    for text in ["", "what color is the circle ?", "Is THERE a red, blue: star?", "x" * 50]:
        assert tok.count(text) == len(tok.encode(text))
    huge = "is " + "a " * 100_000 + "red"
    assert tok.count(huge, stop_after=36) == 37
    assert tok.count("a b c", stop_after=36) == 3


def test_a_prompt_that_fills_the_context_is_a_value_error_not_an_index_error(
    tiny_model: MobileMultiModalLLM,
) -> None:
    dec = tiny_model.network.decoder
    tok = tiny_model.tokenizer
    tokens = _image_tokens(tiny_model)
    for length in (dec.max_len, dec.max_len + 1, 10 * dec.max_len):
        with pytest.raises(PromptTooLongError, match=f"context is {dec.max_len} tokens") as info:
            dec.generate([[tok.bos_id] * length], tokens, 8, NEVER, tok.pad_id)
        assert isinstance(info.value, ValueError)
        assert info.value.tokens == length and info.value.limit == dec.max_len - 1


def test_generation_never_runs_past_the_context(tiny_model: MobileMultiModalLLM) -> None:
    dec = tiny_model.network.decoder
    tok = tiny_model.tokenizer
    tokens = _image_tokens(tiny_model)
    for free in (1, 2, 5):
        prompt = [tok.bos_id] * (dec.max_len - free)
        cached = dec.generate([prompt], tokens, 100, NEVER, tok.pad_id, use_cache=True)
        full = dec.generate([prompt], tokens, 100, NEVER, tok.pad_id, use_cache=False)
        assert len(cached[0]) == free
        assert cached == full


@pytest.mark.parametrize("budget", [0, -5])
def test_a_budget_below_one_is_refused(tiny_model: MobileMultiModalLLM, budget: int) -> None:
    tok = tiny_model.tokenizer
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        tiny_model.network.decoder.generate(
            [tok.prompt("captioning")], _image_tokens(tiny_model), budget, NEVER, tok.pad_id
        )
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        tiny_model.generate_captions([_scene()], max_tokens=budget)


def test_a_long_question_is_refused_before_the_image_is_encoded(tiny_model: MobileMultiModalLLM) -> None:
    """The issue's attack: 45+ words raised IndexError from the position table mid-batch."""
    limit = tiny_model.max_question_tokens
    assert limit == tiny_model.config.max_text_len - 3 - 9
    encoded = {"n": 0}
    handle = tiny_model.network.encoder.register_forward_hook(lambda *_: encoded.__setitem__("n", 1))
    try:
        for question in ["is " + "a " * 58 + "red", "what " + "x " * 100_000 + "?"]:
            with pytest.raises(PromptTooLongError, match=f"the limit is {limit} tokens"):
                tiny_model.answer_questions([_scene(), _scene()], ["is it red ?", question])
        assert encoded["n"] == 0, "a tensor was built for a question over the limit"
        at_limit = " ".join(["a"] * (limit - 1)) + " ?"
        assert tiny_model.tokenizer.count(at_limit) == limit
        assert isinstance(tiny_model.answer_question(_scene(), at_limit), str)
        assert encoded["n"] == 1
    finally:
        handle.remove()


def test_a_stopped_row_ends_at_its_next_step_and_its_batch_mates_go_on(
    tiny_model: MobileMultiModalLLM,
) -> None:
    dec = tiny_model.network.decoder
    tok = tiny_model.tokenizer
    prompts = [tok.prompt("captioning")] * 2
    tokens = _image_tokens(tiny_model, 2)
    free = dec.generate(prompts, tokens, 20, NEVER, tok.pad_id)
    assert [len(o) for o in free] == [20, 20]
    steps = StepCounter(tiny_model, at=4)  # set once the prompt's pass and 3 steps have run
    try:
        stopped = dec.generate(prompts, tokens, 20, NEVER, tok.pad_id, stop=[steps.stop, None])
        assert stopped[0] == free[0][:3]  # the tokens of those passes, nothing after
        assert stopped[1] == free[1]
        steps.calls, steps.stop = 0, threading.Event()
        uncached = dec.generate(
            prompts, tokens, 20, NEVER, tok.pad_id, use_cache=False, stop=[steps.stop, None]
        )
        assert uncached[0] == free[0][:4]  # the reference path: one pass per token
        assert uncached[1] == free[1]
    finally:
        steps.close()


def test_a_batch_whose_rows_are_all_stopped_stops_computing(tiny_model: MobileMultiModalLLM) -> None:
    dec = tiny_model.network.decoder
    tok = tiny_model.tokenizer
    tokens = _image_tokens(tiny_model, 2)
    steps = StepCounter(tiny_model, at=2)
    try:
        out = dec.generate(
            [tok.prompt("captioning")] * 2, tokens, 40, NEVER, tok.pad_id, stop=[steps.stop] * 2
        )
        assert [len(o) for o in out] == [1, 1]
        assert steps.calls == 2  # the prompt's pass and one step; 40 without the signal
        steps.calls = 0
        out = tiny_model.generate_captions([_scene(), _scene()], max_tokens=40, stop=[steps.stop] * 2)
        assert out == ["", ""]
        assert steps.calls == 0  # nothing decoded for rows nobody wants
    finally:
        steps.close()


def test_the_bundled_model_limits_are_the_ones_the_readme_states(bundled_model: MobileMultiModalLLM) -> None:
    """README "Request limits": 36 question tokens, 48 per retrieval text, for the bundled model."""
    assert bundled_model.config.max_text_len == 48
    assert bundled_model.max_question_tokens == 36
    assert bundled_model.max_text_tokens == 48
