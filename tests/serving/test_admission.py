"""Admission by expected wait (serving/admission.py): the drain rate and the refusal rules, fed
with batch durations the test chooses, and the engine's admit() over a model the test holds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mobile_multimodal.serving.admission import Admission, DrainRate, EngineOverloaded, wait_budget_s
from mobile_multimodal.serving.engine import InferenceEngine, Job
from mobile_multimodal.serving.probe import ProbeCase

from .conftest import ModelGate, make_settings


def test_drain_rate_is_the_ratio_of_its_moving_averages() -> None:
    rate = DrainRate(smoothing=0.5)
    assert rate.seconds_per_item == 0.0  # nothing measured: only the count bound refuses
    rate.observe(items=16, seconds=0.32)
    assert rate.seconds_per_item == pytest.approx(0.02)  # the first batch is the estimate
    rate.observe(items=1, seconds=0.1)  # a batch of one weighs by its items, not as a whole batch
    assert rate.seconds_per_item == pytest.approx((0.5 * 0.1 + 0.5 * 0.32) / (0.5 * 1 + 0.5 * 16))
    before = rate.seconds_per_item
    rate.observe(items=0, seconds=5.0)  # nonsense is ignored
    rate.observe(items=3, seconds=-1.0)
    assert rate.seconds_per_item == before
    with pytest.raises(ValueError):
        DrainRate(smoothing=0)


def test_a_slower_machine_moves_the_estimate_within_a_few_dozen_batches() -> None:
    rate = DrainRate()
    rate.observe(16, 16 * 0.005)
    for _ in range(40):
        rate.observe(16, 16 * 0.05)  # the machine became ten times slower
    assert rate.seconds_per_item == pytest.approx(0.05, rel=0.01)


def test_expected_wait_counts_the_queue_and_what_is_left_of_the_running_batch() -> None:
    admission = Admission(max_queue=10, budget_s=1.0)
    assert admission.expected_wait_s(waiting=50, running=16) == 0.0  # nothing measured yet
    admission.rate.observe(items=1, seconds=0.1)
    assert admission.expected_wait_s(waiting=3) == pytest.approx(0.3)
    assert admission.expected_wait_s(waiting=3, running=4, running_for_s=0.0) == pytest.approx(0.7)
    assert admission.expected_wait_s(waiting=3, running=4, running_for_s=0.25) == pytest.approx(0.45)
    assert admission.expected_wait_s(waiting=3, running=4, running_for_s=9.0) == pytest.approx(0.3)


def test_refusal_by_expected_wait_and_by_count() -> None:
    admission = Admission(max_queue=10, budget_s=1.0)
    assert admission.refusal(queued=3, wait_s=0.9) is None
    refusal = admission.refusal(queued=3, wait_s=1.2)
    assert refusal is not None and refusal.reason == "expected_wait"
    assert refusal.expected_wait_s == pytest.approx(1.2)
    assert refusal.retry_after_s == 2  # whole seconds, rounded up: the queue has drained by then
    assert "MOBILE_MM_MAX_QUEUE_WAIT_S" in refusal.message
    full = admission.refusal(queued=10, wait_s=0.0)
    assert full is not None and full.reason == "queue_full" and "max_queue=10" in full.message
    assert full.retry_after_s == 1  # never 0: Retry-After: 0 invites a retry into the same queue


def test_nothing_ahead_is_always_admitted() -> None:
    admission = Admission(max_queue=10, budget_s=0.5)
    admission.rate.observe(items=1, seconds=60.0)  # however slow the last batches were
    assert admission.refusal(queued=0, wait_s=admission.expected_wait_s(waiting=0)) is None


def test_the_budget_is_at_most_half_the_request_timeout() -> None:
    assert wait_budget_s(2.0, request_timeout_s=10.0) == 2.0
    assert wait_budget_s(2.0, request_timeout_s=1.0) == 0.5
    with pytest.raises(ValueError):
        Admission(max_queue=1, budget_s=0)


async def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 60  # a bound for a broken engine, never reached otherwise
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def test_admit_refuses_past_the_budget_and_answers_everything_it_admitted(tmp_path: Path) -> None:
    gate = ModelGate()
    settings = make_settings(
        tmp_path, max_batch_size=1, max_batch_wait_ms=0, max_queue=64, max_queue_wait_s=1.0
    )
    image = ProbeCase.default().image

    async def main() -> None:
        engine = InferenceEngine(settings, gate.loader)
        await engine.start()
        try:
            assert await engine.wait_ready(120)
            for _ in range(60):  # the measured rate: 0.4 s per item (the warm-up's weight fades)
                engine.admission.rate.observe(1, 0.4)
            gate.arm()
            held = asyncio.create_task(engine.admit("captioning", Job(image), 4))
            await asyncio.to_thread(gate.wait_entered)  # one runs, held by the test
            # until the held batch has run past its estimate, nothing is left of it to wait for
            await _until(lambda: time.perf_counter() - engine.batcher.running_since >= 0.5, "the clock stood")
            assert engine.expected_wait_s() == 0.0
            queued = [asyncio.create_task(engine.admit("captioning", Job(image), 4)) for _ in range(3)]
            await _until(lambda: engine.batcher.depth == 3, "the three requests were never queued")
            assert engine.expected_wait_s() == pytest.approx(1.2, rel=1e-3)  # 3 queued x 0.4 s
            with pytest.raises(EngineOverloaded) as refused:
                await engine.admit("captioning", Job(image), 4)
            assert refused.value.refusal.reason == "expected_wait"
            assert refused.value.refusal.retry_after_s == 2  # ceil(1.2)
            assert engine.batcher.depth == 3  # the refused request was never queued
            gate.release()
            results = await asyncio.wait_for(asyncio.gather(held, *queued), 120)
            assert all("caption" in outcome.result for outcome in results)  # nothing admitted was lost
        finally:
            gate.release()
            await engine.stop()

    asyncio.run(main())
