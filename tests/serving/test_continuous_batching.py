"""Continuous batching through the engine (serving/continuous_batcher.py), with the bundled model.

Every ordering here is decided by decode steps, never by the clock: a forward hook on the decoder's
output norm (one call per prefill and per step) holds the model thread at a chosen pass while the
test queues, cancels or times out requests; every wait is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mobile_multimodal.data.natural_images import empty_images
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.serving.batch_jobs import batch_key, run_batch
from mobile_multimodal.serving.batcher import BatchOutcome
from mobile_multimodal.serving.continuous_batcher import ContinuousBatcher
from mobile_multimodal.serving.engine import InferenceEngine, Job
from mobile_multimodal.settings import Settings

from .conftest import LiveServer, data_uri, make_settings, metric_value

T = TypeVar("T")
Outcome = BatchOutcome[dict[str, Any]]
BOUND_S = 60.0  # only a failing test gets near this


@lru_cache(maxsize=1)
def _bundled() -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_pretrained("default")


def _loader(settings: Settings | None = None) -> MobileMultiModalLLM:
    return _bundled()


class StepGate:
    """Counts the decoder's passes (prefill or step); holds pass number ``hold_at`` until released."""

    def __init__(self, model: MobileMultiModalLLM, hold_at: int) -> None:
        self.calls = 0
        self.hold_at = hold_at
        self.entered = threading.Event()
        self.release = threading.Event()
        self._handle = model.network.decoder.norm.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1
        if self.calls == self.hold_at:
            self.entered.set()
            assert self.release.wait(BOUND_S), "the test never released the decoder"

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, BOUND_S), "the held decoder pass never came"

    def close(self) -> None:
        self.release.set()
        self._handle.remove()


def _run(tmp_path: Path, scenario: Callable[[InferenceEngine], Awaitable[T]], **overrides: Any) -> T:
    async def main() -> T:
        settings = make_settings(tmp_path, batching="continuous", **overrides)
        engine = InferenceEngine(settings, loader=_loader)
        await engine.start()
        try:
            assert await engine.wait_ready(BOUND_S), engine.error
            assert isinstance(engine.batcher, ContinuousBatcher)
            return await asyncio.wait_for(scenario(engine), BOUND_S)
        finally:
            await asyncio.wait_for(engine.stop(), BOUND_S)

    return asyncio.run(main())


def _scenes() -> list[Any]:
    return load_eval_split("vqa", 8)


def _caption(engine: InferenceEngine, image: Any, max_tokens: int = 32) -> asyncio.Task[Outcome]:
    return asyncio.ensure_future(engine.admit("captioning", Job(image), max_tokens))


def _long_and_short() -> tuple[Any, Any]:
    """A scene the bundled model captions in many words, and another."""
    scenes = load_eval_split("captioning", 6)
    return scenes[0].image, scenes[1].image  # 17 words (test_decode_batch), and any


def test_outputs_are_those_of_each_request_alone(tmp_path: Path) -> None:
    examples = _scenes()
    model = _bundled()

    async def scenario(engine: InferenceEngine) -> list[Outcome]:
        jobs = [
            _caption(engine, e.image, n) for e, n in zip(examples, [32, 3, 12, 32, 9, 20, 32, 5], strict=True)
        ]
        jobs += [
            asyncio.ensure_future(engine.admit("vqa", Job(e.image, question=e.question), 8)) for e in examples
        ]
        return await asyncio.gather(*jobs)

    outcomes = _run(tmp_path, scenario, max_batch_size=6)  # fewer rows than jobs: they join as rows free
    assert max(o.batch_size for o in outcomes) == 6
    for o, e, n in zip(outcomes[:8], examples, [32, 3, 12, 32, 9, 20, 32, 5], strict=True):
        confidences: list[float] = []
        assert o.result["caption"] == model.generate_captions([e.image], n, confidences=confidences)[0]
        assert o.result["confidence"] == pytest.approx(confidences[0], abs=2e-6)
        assert "out_of_domain" in o.result  # the caption's own decode scored the domain check
    for o, e in zip(outcomes[8:], examples, strict=True):
        assert o.result["answer"] == model.answer_question(e.image, e.question)


def test_a_short_caption_joining_mid_decode_finishes_before_the_long_one(tmp_path: Path) -> None:
    long_image, short_image = _long_and_short()

    async def scenario(engine: InferenceEngine) -> tuple[Outcome, Outcome, list[str]]:
        gate = StepGate(_bundled(), hold_at=4)  # the long caption's prefill, then its third step
        finished: list[str] = []
        try:
            long = _caption(engine, long_image, 32)
            long.add_done_callback(lambda _: finished.append("long"))
            await gate.wait_entered()
            short = _caption(engine, short_image, 2)
            short.add_done_callback(lambda _: finished.append("short"))
            while engine.batcher.depth != 1:  # queued while the long one decodes
                await asyncio.sleep(0.005)
            gate.release.set()
            return await long, await short, finished
        finally:
            gate.close()

    long, short, finished = _run(tmp_path, scenario)
    assert finished == ["short", "long"]
    assert short.batch_size == 2 and long.batch_size == 2  # they decoded side by side
    model = _bundled()
    assert long.result["caption"] == model.generate_caption(long_image, 32)
    assert len(long.result["caption"].split()) > 4
    assert short.result["caption"] == model.generate_caption(short_image, 2)


def test_no_starvation_waiting_jobs_get_rows_in_arrival_order_and_ocr_runs_between_steps(
    tmp_path: Path,
) -> None:
    """One decode row: the queued captions are served first come, first served, and an OCR job
    queued behind them all is answered between two steps of the first caption."""
    images = [e.image for e in _scenes()]

    async def scenario(engine: InferenceEngine) -> list[str]:
        gate = StepGate(_bundled(), hold_at=2)
        order: list[str] = []
        try:
            first = _caption(engine, images[0], 32)
            first.add_done_callback(lambda _: order.append("c0"))
            await gate.wait_entered()
            rest = []
            for i in range(1, 5):
                task = _caption(engine, images[i], 6)
                task.add_done_callback(lambda _, i=i: order.append(f"c{i}"))
                rest.append(task)
            ocr = asyncio.ensure_future(engine.admit("ocr", Job(images[0]), 24))
            ocr.add_done_callback(lambda _: order.append("ocr"))
            while engine.batcher.depth != 5:
                await asyncio.sleep(0.005)
            gate.release.set()
            await asyncio.gather(first, ocr, *rest)
            return order
        finally:
            gate.close()

    order = _run(tmp_path, scenario, max_batch_size=1)
    assert order == ["ocr", "c0", "c1", "c2", "c3", "c4"]


def test_a_cancelled_job_leaves_at_the_next_step(tmp_path: Path) -> None:
    long_image, _ = _long_and_short()

    async def scenario(engine: InferenceEngine) -> int:
        gate = StepGate(_bundled(), hold_at=2)  # prefill, then the first step's pass
        try:
            job = _caption(engine, long_image, 32)
            await gate.wait_entered()
            job.cancel()  # the client went away mid-decode
            with pytest.raises(asyncio.CancelledError):
                await job
            gate.release.set()
            while engine.batcher.running:  # the row leaves at its next step
                await asyncio.sleep(0.005)
            return gate.calls
        finally:
            gate.close()

    # a 17-word caption would have run 18 passes; the cancelled one stops after the held one
    assert _run(tmp_path, scenario) == 2


def test_a_timed_out_job_leaves_at_the_next_step_and_the_others_finish(tmp_path: Path) -> None:
    long_image, short_image = _long_and_short()

    async def scenario(engine: InferenceEngine) -> tuple[int, Outcome]:
        gate = StepGate(_bundled(), hold_at=2)  # held past the 3 s budget by the test, not the clock
        try:
            doomed = _caption(engine, long_image, 32)
            await gate.wait_entered()
            with pytest.raises(TimeoutError):
                await doomed
            other = _caption(engine, short_image, 32)  # joins at the step where the doomed row leaves
            while engine.batcher.depth != 1:
                await asyncio.sleep(0.005)
            gate.release.set()
            survivor = await other
            return gate.calls, survivor
        finally:
            gate.close()

    calls, survivor = _run(tmp_path, scenario, request_timeout_s=3.0)
    assert survivor.result["caption"] == _bundled().generate_caption(short_image, 32)
    # the doomed row's prefill and held step, then the survivor's prefill and one step per word:
    # the timed-out row ran no pass after the held one
    assert calls == 2 + 1 + len(survivor.result["caption"].split())


def test_a_prompt_too_long_fails_alone(tmp_path: Path) -> None:
    examples = _scenes()[:3]
    model = _bundled()
    too_long = " ".join(["red"] * (model.max_question_tokens + 5))

    async def scenario(engine: InferenceEngine) -> list[Outcome | BaseException]:
        jobs = [
            asyncio.ensure_future(engine.admit("vqa", Job(e.image, question=e.question), 8)) for e in examples
        ]
        jobs.insert(
            1, asyncio.ensure_future(engine.admit("vqa", Job(examples[0].image, question=too_long), 8))
        )
        jobs.append(_caption(engine, examples[0].image, 12))
        return await asyncio.gather(*jobs, return_exceptions=True)

    outcomes = _run(tmp_path, scenario)
    assert isinstance(outcomes[1], PromptTooLongError)
    good = [o for i, o in enumerate(outcomes) if i != 1]
    assert all(isinstance(o, BatchOutcome) for o in good)
    answers = [o.result["answer"] for o in good[:3] if isinstance(o, BatchOutcome)]
    assert answers == [model.answer_question(e.image, e.question) for e in examples]


def test_results_carry_the_domain_flags_static_batching_gives(tmp_path: Path) -> None:
    """An answer's out-of-domain flag comes from a caption decode of its image, as with static
    batching, never from the answer's own decode."""
    blank = empty_images()[0]
    scene = load_eval_split("vqa", 1)[0]
    jobs = [
        ("vqa", Job(blank, question="what color is the star ?"), 8),
        ("vqa", Job(scene.image, question=scene.question), 8),
    ]
    jobs += [("captioning", Job(blank), 32), ("captioning", Job(scene.image), 32)]

    async def scenario(engine: InferenceEngine) -> list[Outcome]:
        return await asyncio.gather(*[engine.admit(task, job, n) for task, job, n in jobs])

    outcomes = _run(tmp_path, scenario, domain_check_tasks="captioning,vqa")
    for (task, job, n), outcome in zip(jobs, outcomes, strict=True):
        [static] = run_batch(_bundled(), batch_key(task, n), [job], "captioning,vqa")
        assert outcome.result.keys() == static.keys()
        for name, value in static.items():
            assert outcome.result[name] == (
                pytest.approx(value, abs=2e-6) if isinstance(value, float) else value
            )
    assert [o.result["out_of_domain"] for o in outcomes] == [True, False, True, False]


def test_after_a_reload_running_rows_finish_on_the_old_model_and_new_ones_start_on_the_new(
    tmp_path: Path,
) -> None:
    old, new = _bundled(), MobileMultiModalLLM.from_pretrained("default")
    long_image, short_image = _long_and_short()
    served = {"model": old}

    async def main() -> tuple[list[str], Outcome, Outcome, int, int]:
        executor = ThreadPoolExecutor(1)
        batcher = ContinuousBatcher(
            model=lambda: served["model"],
            run_single_pass=lambda key, jobs: [],
            max_rows=8,
            max_batch_size=8,
            max_queue=8,
            executor=executor,
            domain_tasks=lambda: "",  # no domain check: a short caption's would decode once more
        )
        await batcher.start()
        gate = StepGate(old, hold_at=2)
        on_new = StepGate(new, hold_at=0)  # counts the new model's passes, holds none
        order: list[str] = []
        try:
            long = asyncio.ensure_future(batcher.submit(("captioning", 32), Job(long_image), BOUND_S))
            long.add_done_callback(lambda _: order.append("long"))
            await gate.wait_entered()
            served["model"] = new  # what the engine's swap does between two iterations
            short = asyncio.ensure_future(batcher.submit(("captioning", 4), Job(short_image), BOUND_S))
            short.add_done_callback(lambda _: order.append("short"))
            while batcher.depth != 1:
                await asyncio.sleep(0.005)
            gate.release.set()
            return order, await long, await short, gate.calls, on_new.calls
        finally:
            gate.close()
            on_new.close()
            await asyncio.wait_for(batcher.close(), BOUND_S)
            executor.shutdown(wait=True)

    order, long, short, old_passes, new_passes = asyncio.run(asyncio.wait_for(main(), BOUND_S))
    # the short caption waited for the old model's row to leave (no two models in one batch)
    assert order == ["long", "short"] and long.batch_size == 1 and short.batch_size == 1
    assert long.result["caption"] == old.generate_caption(long_image, 32)
    assert short.result["caption"] == new.generate_caption(short_image, 4)
    # every pass of the long caption ran on the old weights, the short one's on the new
    assert old_passes == len(long.result["caption"].split()) + 1
    assert new_passes == 1 + len(short.result["caption"].split())


def test_served_over_http_with_the_batch_metrics(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(batching="continuous")
    with server.client() as client:
        before = client.get("/metrics").text
        for task, extra in (
            ("captioning", {"max_tokens": 4}),
            ("vqa", {"question": "is there a red circle ?"}),
        ):
            response = client.post("/inference", json={"image": data_uri(), "task": task, **extra})
            assert response.status_code == 200, response.text
            assert response.json()["task"] == task
        after = client.get("/metrics").text
    for task in ("captioning", "vqa"):
        labels = {"batch_size": "1", "task": task}
        grown = metric_value(after, "batch_processing_duration_seconds_count", **labels) - metric_value(
            before, "batch_processing_duration_seconds_count", **labels
        )
        assert grown >= 1  # one observation per decode step of the task's rows
        status = {"model_type": "multimodal", "task": task, "status": "success"}
        assert metric_value(after, "model_inference_requests_total", **status) >= 1


@pytest.mark.parametrize(
    ("batching", "runtime", "continuous"),
    [
        ("continuous", "pytorch", True),
        ("static", "pytorch", False),
        ("continuous", "onnxruntime", True),
        ("static", "onnxruntime", False),
    ],
)
def test_the_setting_picks_the_batcher_for_either_runtime(
    tmp_path: Path, batching: str, runtime: str, continuous: bool
) -> None:
    engine = InferenceEngine(make_settings(tmp_path, batching=batching, runtime=runtime), loader=_loader)
    assert engine.continuous is continuous
    assert isinstance(engine.batcher, ContinuousBatcher) is continuous
