"""Task-constrained decoding: a caption stays a caption, an answer is one of the answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_multimodal.data.task_language import (
    caption_words,
    position_phrases,
    sampled_vqa_answers,
    vqa_answers,
)
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.constraints import TaskConstraints
from mobile_multimodal.model.tokenizer import Tokenizer

TOK = Tokenizer.default()
RULES = TaskConstraints.from_tokenizer(TOK)


def _ids(text: str) -> list[int]:
    return TOK.encode(text)


def test_task_language_comes_from_the_training_corpus() -> None:
    words = caption_words()
    assert {"yes", "no", "what", "color", "?"}.isdisjoint(words)
    assert {"a", "and", "large", "teal", "star", "center", "bottom", ":", ","} <= words
    answers = vqa_answers()
    assert ("yes",) in answers and ("top", "left") in answers and ("red", "star") in answers
    assert len(answers) == 61  # 8 colours, 9 positions, 2 sizes, 4 shapes, zero..three, 32 pairs, yes/no
    assert answers == sampled_vqa_answers()  # exactly what 20,000 sampled training questions answer
    easy = {"circle", "green", "red", "gray", "yes", "teal", "black", "rectangle", "yellow"}
    assert {(a,) for a in easy} <= answers  # easy-VQA's answers are inside the set


def test_vqa_answer_must_be_one_of_the_answers() -> None:
    first = {TOK.itos[i] for i in RULES.allowed("vqa", [])}
    assert "yes" in first and "top" in first and "and" not in first and "<eos>" not in first
    after_red = {TOK.itos[i] for i in RULES.allowed("vqa", _ids("red"))}
    assert after_red == {"<eos>", "circle", "rectangle", "triangle", "star"}
    assert {TOK.itos[i] for i in RULES.allowed("vqa", _ids("yes"))} == {"<eos>"}
    assert {TOK.itos[i] for i in RULES.allowed("vqa", _ids("top"))} == {"<eos>", "left", "right"}


def test_a_caption_is_one_the_training_data_can_hold() -> None:
    def nxt(text: str) -> set[str]:
        return {TOK.itos[i] for i in RULES.allowed("captioning", _ids(text))}

    assert nxt("") == {"a", "one", "two", "three", "there"}
    assert "yes" not in nxt("a large red circle in the")
    # each object in its own cell, in reading order: after "the top" only cells after it
    assert "center" not in nxt("a large red circle in the center and a large red circle in the")
    assert nxt("a small red star at the top and a large blue circle at the top") == {"right"}
    assert "left" not in nxt("a small red star on the left")
    # the count word decides how many objects follow
    assert nxt("one shape : small red star top") == {"<eos>", "left", "right"}
    assert "," not in nxt("one shape : small red star top left")
    assert nxt("two shapes : small red star top left") == {","}
    # a whole caption may end; a cut one may not
    assert "<eos>" in nxt("a small red star at the top left")
    assert "<eos>" not in nxt("a small red star at the")
    with pytest.raises(ValueError, match="no decoding constraint"):
        RULES.allowed("ocr", [])


def test_every_training_caption_is_accepted() -> None:
    from mobile_multimodal.data import scenes

    rng = np.random.default_rng(5)
    for _ in range(300):
        for caption in scenes.caption_variants(scenes.sample_scene(rng)):
            ids = _ids(caption)
            for k in range(len(ids)):
                assert ids[k] in RULES.allowed("captioning", ids[:k]), (caption, k)
            assert TOK.eos_id in RULES.allowed("captioning", ids), caption


def test_constrained_decoding_of_a_model_obeys_every_rule(tiny_model: MobileMultiModalLLM) -> None:
    """The random-weight tiny model would emit any word; constrained, it cannot."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(6)]
    free = MobileMultiModalLLM(tiny_model.network, tiny_model.tokenizer)
    free.constrained_decoding = False
    assert not all(set(c.split()) <= caption_words() for c in free.generate_captions(images))
    captions = tiny_model.generate_captions(images)
    positions = {" ".join(p) for p in position_phrases()}
    for caption in captions:
        words = caption.split()
        assert set(words) <= caption_words(), caption
        runs = [
            " ".join(g)
            for is_pos, g in itertools.groupby(
                words, key=lambda w: w in {"top", "bottom", "left", "right", "center"}
            )
            if is_pos
        ]
        assert all(r in positions for r in runs) and len(runs) == len(set(runs)), caption
    answers = tiny_model.answer_questions(images, ["what color is the circle ?"] * len(images))
    assert all(tuple(a.split()) in vqa_answers() for a in answers), answers


def test_cached_and_uncached_paths_apply_the_same_constraint(tiny_model: MobileMultiModalLLM) -> None:
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    net, tok = tiny_model.network, tiny_model.tokenizer
    tokens, _ = net.encode_images(tiny_model._scenes(images))
    prompts = [tok.prompt("captioning")] * 3
    rules = TaskConstraints.from_tokenizer(tok)
    allowed = lambda _row, emitted: rules.allowed("captioning", emitted)  # noqa: E731
    cached = net.decoder.generate(prompts, tokens, 12, tok.eos_id, tok.pad_id, allowed=allowed)
    uncached = net.decoder.generate(
        prompts, tokens, 12, tok.eos_id, tok.pad_id, use_cache=False, allowed=allowed
    )
    assert cached == uncached


def test_the_joint_table_allows_what_the_automata_allow_on_random_walks() -> None:
    """The decoder's tensor form (one masked argmax and a state lookup per step, rows of any
    task in one batch) picks exactly what the per-row walk of the automaton picks."""
    from mobile_multimodal.model.decoder import _greedy

    rng = np.random.default_rng(3)
    tasks = ["captioning", "vqa", None, "captioning", "vqa"]
    rows = RULES.rows(tasks)
    states = rows.initial(torch.device("cpu"))
    emitted: list[list[int]] = [[] for _ in tasks]
    done = [False] * len(tasks)
    for _ in range(30):
        logits = torch.tensor(rng.normal(size=(len(tasks), TOK.vocab_size)), dtype=torch.float32)
        for i, task in enumerate(tasks):
            if task is not None and not done[i]:
                assert rows(i, emitted[i]) == RULES.allowed(task, emitted[i])
        walked = _greedy(
            logits, lambda i, e: RULES.allowed(tasks[i], e) if tasks[i] else range(TOK.vocab_size), emitted
        )
        picked, states = rows.pick(logits, states)
        for i in range(len(tasks)):
            if not done[i]:
                assert int(picked[i]) == int(walked[i])
                emitted[i].append(int(picked[i]))
                done[i] = int(picked[i]) == TOK.eos_id
    assert done[1] and done[4]  # every answer ends within 30 steps


def test_off_language_tokens_leave_only_eos() -> None:
    """A token off the language (never picked by the decoder, but a caller may feed one) leads
    to the state that only allows <eos>, as ``allowed`` says."""
    table = RULES.table
    state = table.state_after(table.start["vqa"], _ids("yes red"))
    assert state == table.off and table.allowed(state) == [TOK.eos_id]
    assert RULES.allowed("vqa", _ids("yes red")) == [TOK.eos_id]
