"""The batch prefetcher hands out exactly what the builder draws, in any order, and fails clearly."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from mobile_multimodal.model.tokenizer import Tokenizer
from mobile_multimodal.training.batches import BatchBuilder, BatchSizes
from mobile_multimodal.training.prefetch import START_METHOD, Prefetcher, auto_workers, usable_cores


def _builder() -> BatchBuilder:
    return BatchBuilder(
        Tokenizer.default(),
        seed=3,
        sizes=BatchSizes(caption=2, scene_vqa=2, easy_vqa=0, ocr=2),
        easy_vqa=None,
    )


def _fails_at_two(step: int) -> int:
    if step == 2:
        raise ValueError(f"no batch for step {step}")
    return step * 10


def _touch(folder: Path, step: int) -> int:
    (folder / str(step)).touch()  # a file per step drawn: the worker's calls seen from here
    return step


def _dies_at_one(step: int) -> int:
    if step == 1:
        os._exit(3)  # a worker killed mid-batch (the OOM killer's way)
    return step


@pytest.mark.slow
def test_prefetched_batches_equal_the_builders_in_any_order() -> None:
    builder = _builder()
    with Prefetcher(builder.build, workers=1) as batches:
        # in order, then a jump ahead and one back (a resumed run starts anywhere)
        for step in (0, 1, 2, 7, 3):
            got, want = batches.get(step), builder.build(step)
            for f in fields(want):
                a, b = getattr(got, f.name), getattr(want, f.name)
                assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b, (step, f.name)


@pytest.mark.slow
def test_a_workers_exception_is_raised_for_its_step() -> None:
    with Prefetcher(_fails_at_two, workers=1) as batches:
        assert batches.get(0) == 0
        assert batches.get(1) == 10  # step 2 is already being drawn, and failing, in the worker
        with pytest.raises(ValueError, match="no batch for step 2"):
            batches.get(2)
        assert batches.get(3) == 30  # the worker lives on


@pytest.mark.slow
def test_nothing_is_drawn_for_steps_past_the_end(tmp_path: Path) -> None:
    with Prefetcher(functools.partial(_touch, tmp_path), workers=1, end=3) as batches:
        assert [batches.get(s) for s in range(3)] == [0, 1, 2]
    # close() waited for the worker: steps 3 and 4, which the two ahead would be, never ran
    assert sorted(int(f.name) for f in tmp_path.iterdir()) == [0, 1, 2]


@pytest.mark.slow
def test_a_dead_worker_ends_with_a_clear_error() -> None:
    dead = pytest.raises(RuntimeError, match="--data-workers 0")
    with Prefetcher(_dies_at_one, workers=1) as batches, dead:
        batches.get(0)
        batches.get(1)


def test_without_workers_batches_are_drawn_in_this_process() -> None:
    calls: list[int] = []

    def record(step: int) -> int:  # a call recorded here was made in this process
        calls.append(step)
        return step

    with Prefetcher(record, workers=0) as batches:
        assert [batches.get(s) for s in (0, 1, 5)] == [0, 1, 5]
    assert calls == [0, 1, 5]


def test_one_worker_for_one_process_on_two_cores_or_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert usable_cores() == 2 and auto_workers() == 1
    assert auto_workers(world_size=2) == 0  # data-parallel ranks share the cores already
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert auto_workers() == 0


def test_a_negative_worker_count_is_refused() -> None:
    with pytest.raises(ValueError, match="--data-workers"):
        Prefetcher(_fails_at_two, workers=-1)


@pytest.mark.slow
@pytest.mark.skipif(START_METHOD != "fork", reason="only forked workers spare a script its main guard")
def test_a_script_without_a_main_guard_gets_its_batches(tmp_path: Path) -> None:
    script = tmp_path / "draw.py"
    script.write_text(
        textwrap.dedent(
            """
            from mobile_multimodal.training.prefetch import Prefetcher

            with Prefetcher(lambda step: step * step, workers=1) as batches:
                print([batches.get(s) for s in range(4)])
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[0, 1, 4, 9]"
