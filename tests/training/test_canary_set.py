"""The canary set and its scoring (training/canary_set.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.training.canary_set import CANARY_TASKS, CanaryRun, CanarySet, evaluate_canary


def test_the_canary_set_is_fixed_and_held_out() -> None:
    a, b = CanarySet.build(6), CanarySet.build(6)
    for task in CANARY_TASKS:
        held_out = load_eval_split(task, 6)  # the evaluation splits' seeds, never training's
        for x, y, z in zip(a.examples[task], b.examples[task], held_out, strict=True):
            assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
            assert np.array_equal(np.asarray(x.image), np.asarray(z.image))
            assert (x.text, x.question, x.answer) == (z.text, z.question, z.answer)
    with pytest.raises(ValueError):
        CanarySet.build(1)


def test_slices_cover_every_example_in_small_calls() -> None:
    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)
    canary = CanarySet.build(10)
    calls: list[int] = []
    captions = model.generate_captions

    def counted(images: list[object], *args: object, **kwargs: object) -> list[str]:
        calls.append(len(images))
        return captions(images, *args, **kwargs)  # type: ignore[arg-type]

    model.generate_captions = counted  # type: ignore[method-assign]
    run = CanaryRun(canary, model, slice_size=4)
    slices = list(run.slices())
    # 4 tasks x ceil(10 / 4) model calls, and 3 for the retrieval texts
    assert len(slices) == 4 * 3 + 3
    with pytest.raises(RuntimeError):
        run.scores()  # nothing ran yet
    for work in slices:
        work()
    assert calls == [4, 4, 2]
    scores = run.scores()
    assert set(scores) == set(CANARY_TASKS)
    again = CanaryRun(canary, model, slice_size=4)
    for work in again.slices():
        work()
    assert again.scores() == scores  # the same model scores the same every run


def test_the_bundled_release_carries_its_canary_baseline() -> None:
    model = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    report = model.manifest["canary"]
    assert report["size"] == 32
    measured = evaluate_canary(model, 32)["tasks"]
    for task in CANARY_TASKS:
        assert measured[task]["primary"] == pytest.approx(report["tasks"][task]["primary"])
