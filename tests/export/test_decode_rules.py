"""An exported bundle applies the same decoding constraint as PyTorch, from bundle.json alone."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_multimodal.export.bundle import CONSTRAINT_RULES
from mobile_multimodal.export.decode_rules import (
    OFF_LANGUAGE,
    DecodeRule,
    TaskRules,
    pick_rows,
    rule_for_prompt,
)
from mobile_multimodal.model.constraints import TaskConstraints
from mobile_multimodal.model.tokenizer import Tokenizer

TOK = Tokenizer.default()
RULES = TaskConstraints.from_tokenizer(TOK)
SPEC = {
    "tasks": {
        "captioning": {"prompt": TOK.prompt("captioning"), "constraint": RULES.to_json()["captioning"]},
        "vqa": {"prompt": TOK.prompt("vqa"), "constraint": RULES.to_json()["vqa"]},
        "ocr": {"graphs": ["ocr"]},
    }
}


def test_bundle_rule_allows_exactly_what_the_model_allows() -> None:
    """Random walks through each task's language (and off it): both sides agree at every step."""
    rng = np.random.default_rng(0)
    for task in ("captioning", "vqa"):
        rule = rule_for_prompt(
            SPEC, TOK.prompt(task, "what color is it ?" if task == "vqa" else None), TOK.eos_id
        )
        assert rule.task == task
        for _ in range(200):
            emitted: list[int] = []
            state = rule.start  # the decode loop's way: the state kept as the answer grows
            for _ in range(12):
                want = RULES.allowed(task, emitted)
                assert rule.allowed(emitted) == want, (task, emitted)
                logits = rng.normal(size=TOK.vocab_size).astype(np.float32)
                nxt = rule.pick(logits, emitted)
                assert nxt == want[int(np.argmax(logits[want]))]
                assert rule.pick_in(logits, state) == nxt
                if nxt == TOK.eos_id:
                    break
                # now and then step off the language, as a model without the rule would
                emitted.append(nxt if rng.random() < 0.8 else int(rng.integers(TOK.vocab_size)))
                state = rule.next_state(state, emitted[-1])
                assert state == rule.state_after(emitted)
                if state == OFF_LANGUAGE:
                    assert rule.allowed(emitted) == [TOK.eos_id]


def test_a_batch_of_rows_picks_what_each_row_picks_alone() -> None:
    """``pick_rows`` (the server's decode, one numpy pass per step) gives every row ``pick_in``'s
    token: rows of both tasks and of free decoding in one batch, in their language's states and
    off it, with ties among the allowed ids (the first maximum wins) and the maximum outside."""
    rules = TaskRules(SPEC, TOK.eos_id)
    caption, vqa = rules.for_prompt(TOK.prompt("captioning")), rules.for_prompt(TOK.prompt("vqa", "what ?"))
    rng = np.random.default_rng(1)
    for _ in range(50):
        rows = [caption, vqa, rules.free] * 4
        states = [
            rule.start if rule.task is None else int(rng.choice([*range(len(rule.edges)), OFF_LANGUAGE]))
            for rule in rows
        ]
        logits = rng.integers(-3, 3, (len(rows), TOK.vocab_size)).astype(np.float32)  # many ties
        want = [rule.pick_in(row, state) for rule, row, state in zip(rows, logits, states, strict=True)]
        assert pick_rows(logits, rows, states).tolist() == want


def test_task_rules_build_each_tasks_rule_once_and_pick_it_by_prompt() -> None:
    rules = TaskRules(SPEC, TOK.eos_id)
    caption = rules.for_prompt(TOK.prompt("captioning"))
    assert caption.task == "captioning" and rules.for_prompt(TOK.prompt("captioning")) is caption
    assert rules.for_prompt(TOK.prompt("vqa", "what color ?")).task == "vqa"
    assert rules.for_prompt([]).task is None  # no prompt: free decoding (constrained=False)
    fresh = rule_for_prompt(SPEC, TOK.prompt("captioning"), TOK.eos_id)
    assert [list(a) for a in caption.allowed_ids] == [list(a) for a in fresh.allowed_ids]


def test_pick_takes_the_best_allowed_token_not_the_best_token() -> None:
    rule = rule_for_prompt(SPEC, TOK.prompt("captioning"), TOK.eos_id)
    logits = np.zeros(TOK.vocab_size, dtype=np.float32)
    logits[TOK.stoi["yes"]] = 10.0  # the model's favourite is a VQA answer
    logits[TOK.stoi["a"]] = 1.0
    assert rule.pick(logits, []) == TOK.stoi["a"]


def test_a_bundle_without_constraints_decodes_freely() -> None:
    old = {"tasks": {"captioning": {"prompt": TOK.prompt("captioning")}}}
    rule = rule_for_prompt(old, TOK.prompt("captioning"), TOK.eos_id)
    assert rule.allowed([]) is None
    logits = np.zeros(TOK.vocab_size, dtype=np.float32)
    logits[TOK.stoi["yes"]] = 10.0
    assert rule.pick(logits, []) == TOK.stoi["yes"]
    assert DecodeRule("ocr", None, TOK.eos_id).allowed([]) is None
    assert any("automaton" in line for line in CONSTRAINT_RULES)


@pytest.mark.parametrize("which", ["bundled", "untrained"])
def test_torch_bundle_decodes_what_the_model_decodes_where_the_rule_bites(which: str, tiny_model) -> None:
    """User-style scenes (dark backgrounds, tiny shapes) are where a model that does not know them
    strays; the bundle's loop must stray identically. The bundled model, trained on such scenes,
    no longer strays on them (its captions are the same with the rule or without); an untrained
    network strays everywhere, so the rule changes its captions and the loops must agree there."""
    from pathlib import Path

    from mobile_multimodal.data.user_style import load_user_split
    from mobile_multimodal.export.bundle import describe_bundle, tokenizer_json
    from mobile_multimodal.export.decode import Bundle, BundleModel
    from mobile_multimodal.export.graphs import TorchGraphRunner, build_graphs
    from mobile_multimodal.model import MobileMultiModalLLM

    model = MobileMultiModalLLM.from_pretrained("default") if which == "bundled" else tiny_model
    graphs = build_graphs(model)
    description = describe_bundle(
        model,
        graphs,
        {g.name: f"{g.name}.pt" for g in graphs},
        platform="android",
        fmt="torch",
        runtime="pytorch",
        quantization=model.quantization,
    )
    exported = BundleModel(
        Bundle(Path("."), description, tokenizer_json(model.tokenizer)), TorchGraphRunner(graphs)
    )
    scenes = [e.image for e in load_user_split("user_captioning", 12)]
    captions = model.generate_captions(scenes)
    model.constrained_decoding = False
    try:
        free = model.generate_captions(scenes)
    finally:
        model.constrained_decoding = True
    if which == "untrained":
        assert captions != free  # the rule changed some of these captions
    assert exported.generate_captions(scenes) == captions
    vqa = load_user_split("user_vqa", 8)
    images, questions = [e.image for e in vqa], [e.question for e in vqa]
    assert exported.answer_questions(images, questions) == model.answer_questions(images, questions)
