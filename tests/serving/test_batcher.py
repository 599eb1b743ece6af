"""The dynamic batcher, with a plain function standing in for the model (the HTTP tests use the real one)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from mobile_multimodal.observability import metrics
from mobile_multimodal.serving.batcher import BatcherClosedError, DynamicBatcher, QueueFullError


class Recorder:
    """run_batch that records each batch it was given and doubles the items."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.delay_s = delay_s
        self.gate = gate
        self.started = threading.Event()  # set when the first batch has begun

    def __call__(self, key: str, items: list[int]) -> list[int]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(60)  # (the tests always open it; the bound only matters when one fails)
        time.sleep(self.delay_s)
        self.batches.append((key, list(items)))
        return [x * 2 for x in items]


async def _until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    """Wait, without blocking the event loop, until ``condition()`` holds (60 s at most: a failure)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _batcher(run: Recorder, **kw: float) -> DynamicBatcher[str, int, int]:
    opts = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue": 64}
    opts.update(kw)
    return DynamicBatcher(
        run,
        max_batch_size=int(opts["max_batch_size"]),
        max_wait_s=float(opts["max_wait_s"]),
        max_queue=int(opts["max_queue"]),
        executor=ThreadPoolExecutor(1),
    )


def test_concurrent_requests_form_full_batches_and_get_their_own_results() -> None:
    async def main() -> None:
        run = Recorder()
        b = _batcher(run)
        await b.start()
        outcomes = await asyncio.gather(*(b.submit("t", i, timeout=60) for i in range(10)))
        await b.close()
        assert [o.result for o in outcomes] == [2 * i for i in range(10)]
        assert [len(items) for _, items in run.batches] == [4, 4, 2]
        assert [o.batch_size for o in outcomes] == [4] * 8 + [2] * 2
        assert b.largest_batch == 4 and b.batches_run == 3

    asyncio.run(main())


def test_a_lone_request_waits_at_most_max_wait() -> None:
    async def main() -> None:
        b = _batcher(Recorder(), max_wait_s=0.05)
        await b.start()
        start = time.perf_counter()
        # nobody else comes and nothing closes the batcher: only max_wait can end its wait (a
        # batcher that waited for a full batch would run into the timeout)
        outcome = await b.submit("t", 1, timeout=60)
        elapsed = time.perf_counter() - start
        await b.close()
        assert outcome.result == 2 and outcome.batch_size == 1
        assert elapsed >= 0.045
        assert outcome.queued_s >= 0.045

    asyncio.run(main())


def test_batch_size_one_disables_batching() -> None:
    async def main() -> None:
        run = Recorder()
        # a full (size-1) batch never waits: with a 600 s max wait, any wait runs into the timeout
        b = _batcher(run, max_batch_size=1, max_wait_s=600)
        await b.start()
        await asyncio.gather(*(b.submit("t", i, timeout=60) for i in range(5)))
        await asyncio.wait_for(b.close(), 60)
        assert [len(items) for _, items in run.batches] == [1] * 5

    asyncio.run(main())


def test_different_keys_never_share_a_batch() -> None:
    async def main() -> None:
        run = Recorder()
        b = _batcher(run)
        await b.start()
        await asyncio.gather(*(b.submit("ab"[i % 2], i, timeout=60) for i in range(8)))
        await b.close()
        for key, items in run.batches:
            assert all("ab"[i % 2] == key for i in items)
        assert sorted(len(items) for _, items in run.batches) == [4, 4]

    asyncio.run(main())


def test_full_queue_is_refused_at_once_and_counted() -> None:
    async def main() -> None:
        gate = threading.Event()
        run = Recorder(gate=gate)
        b = _batcher(run, max_batch_size=1, max_wait_s=0, max_queue=3)
        await b.start()
        before = metrics.QUEUE_REJECTIONS.labels("t")._value.get()
        first = asyncio.create_task(b.submit("t", 0, timeout=60))
        await _until(run.started.is_set)  # the first is running (blocked on the gate), not queued
        queued = [asyncio.create_task(b.submit("t", i, timeout=60)) for i in range(1, 4)]
        await asyncio.sleep(0)  # each queues its request
        assert b.depth == 3
        assert metrics.QUEUE_DEPTH.labels("t")._value.get() == 3
        with pytest.raises(QueueFullError):
            await b.submit("t", 99, timeout=10)
        assert metrics.QUEUE_REJECTIONS.labels("t")._value.get() == before + 1
        gate.set()
        results = [o.result for o in await asyncio.gather(first, *queued)]
        await b.close()
        assert results == [0, 2, 4, 6]
        assert metrics.QUEUE_DEPTH.labels("t")._value.get() == 0

    asyncio.run(main())


def test_a_request_that_times_out_in_the_queue_never_runs() -> None:
    async def main() -> None:
        gate = threading.Event()
        run = Recorder(gate=gate)
        b = _batcher(run, max_batch_size=1, max_wait_s=0)
        await b.start()
        blocker = asyncio.create_task(b.submit("t", 1, timeout=60))
        await _until(run.started.is_set)  # the blocker is running (blocked on the gate), not queued
        with pytest.raises(TimeoutError):
            await b.submit("t", 2, timeout=0.05)
        assert b.depth == 0
        gate.set()
        await blocker
        await b.close()
        assert [items for _, items in run.batches] == [[1]]

    asyncio.run(main())


def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_goes_on() -> None:
    calls = {"n": 0}

    def flaky(key: str, items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] <= 3:  # the batch, then each of its two requests retried alone
            raise RuntimeError("model exploded")
        return items

    async def main() -> None:
        b: DynamicBatcher[str, int, int] = DynamicBatcher(
            flaky, max_batch_size=4, max_wait_s=0.02, max_queue=8, executor=ThreadPoolExecutor(1)
        )
        await b.start()
        results = await asyncio.gather(
            *(b.submit("t", i, timeout=60) for i in range(2)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        assert (await b.submit("t", 7, timeout=60)).result == 7
        await b.close()

    asyncio.run(main())


def test_close_finishes_queued_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        run = Recorder(delay_s=0.02)
        b = _batcher(run, max_batch_size=2, max_wait_s=600)
        await b.start()
        tasks = [asyncio.create_task(b.submit("t", i, timeout=60)) for i in range(5)]
        await asyncio.sleep(0)  # every submit queues its request before close() begins
        # must not wait the 600 s max wait for the partial batch (60 s would be a failure), nor drop it
        await asyncio.wait_for(b.close(), 60)
        assert [o.result for o in await asyncio.gather(*tasks)] == [0, 2, 4, 6, 8]
        with pytest.raises(BatcherClosedError):
            await b.submit("t", 1, timeout=1)

    asyncio.run(main())


def test_batch_duration_is_recorded_with_the_bucketed_size() -> None:
    async def main() -> None:
        b = _batcher(Recorder(), max_batch_size=3, max_wait_s=0.05)
        hist = metrics.BATCH_DURATION.labels("4", "t")
        before = sum(bucket.get() for bucket in hist._buckets)
        await b.start()
        await asyncio.gather(*(b.submit("t", i, timeout=60) for i in range(3)))
        await b.close()
        assert sum(bucket.get() for bucket in hist._buckets) == before + 1  # size 3 -> bucket "4"

    asyncio.run(main())


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_s": -1}, {"max_queue": 0}])
def test_invalid_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        _batcher(Recorder(), **kwargs)


def test_no_wait_when_nobody_else_is_arriving() -> None:
    async def main() -> None:
        arriving = {"n": 0}
        run = Recorder()
        b: DynamicBatcher[str, int, int] = DynamicBatcher(
            run,
            max_batch_size=8,
            max_wait_s=600,  # any wait that is not cut short runs into the 60 s timeouts
            max_queue=8,
            executor=ThreadPoolExecutor(1),
            arriving=lambda: arriving["n"],
        )
        await b.start()
        assert (await b.submit("t", 1, timeout=60)).batch_size == 1  # not the max wait
        # Two requests still decoding: the first queued one waits for them, and all three share a batch.
        arriving["n"] = 2
        first = asyncio.create_task(b.submit("t", 2, timeout=60))
        await asyncio.sleep(0.05)
        arriving["n"] = 0
        rest = [b.submit("t", 3, timeout=60), b.submit("t", 4, timeout=60)]
        outcomes = await asyncio.gather(first, *rest)
        await b.close()
        assert [o.batch_size for o in outcomes] == [3, 3, 3]
        # After a batch of 3, the first client back waits (at most max_wait) for the other two.
        b2: DynamicBatcher[str, int, int] = DynamicBatcher(
            run,
            max_batch_size=8,
            max_wait_s=0.3,
            max_queue=8,
            executor=ThreadPoolExecutor(1),
            arriving=lambda: 0,
        )
        await b2.start()
        await asyncio.gather(*(b2.submit("t", i, timeout=60) for i in range(3)))
        start = time.perf_counter()
        lone = await b2.submit("t", 9, timeout=60)  # ended by max_wait alone: nobody else comes
        waited = time.perf_counter() - start
        assert lone.batch_size == 1 and waited > 0.25
        b2.max_wait_s = 600  # from here on, any wait runs into the timeout
        await b2.submit("t", 10, timeout=60)  # the last batch had one: no more waiting
        await b2.close()

    asyncio.run(main())


class Overlap:
    """run_batch that counts how many batches run at once. Holding, each batch waits (60 s at most)
    at a barrier for a second batch to enter beside it, so a batcher that never runs two at once
    fails the test instead of hanging it."""

    def __init__(self, hold: bool, timeout_s: float = 60) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.hold = hold
        self.barrier = threading.Barrier(2, timeout=timeout_s)
        self.drained: list[tuple[int, float]] = []

    def __call__(self, key: str, items: list[int]) -> list[int]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            if self.hold:
                self.barrier.wait()
            time.sleep(0.05)
        finally:
            with self.lock:
                self.now -= 1
        return [x * 2 for x in items]


def _concurrent_batcher(run: Overlap, concurrency: int) -> DynamicBatcher[str, int, int]:
    return DynamicBatcher(
        run,
        max_batch_size=2,
        max_wait_s=0.0,
        max_queue=64,
        executor=ThreadPoolExecutor(concurrency),
        concurrency=concurrency,
        on_batch=lambda items, seconds: run.drained.append((items, seconds)),
    )


def test_concurrent_batches_run_beside_each_other_and_their_drain_times_add_up() -> None:
    async def main() -> None:
        run = Overlap(hold=True)
        b = _concurrent_batcher(run, concurrency=2)
        await b.start()
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(b.submit(k, i, timeout=60) for i, k in enumerate("abab")))
        elapsed = time.perf_counter() - start
        assert [o.result for o in outcomes] == [0, 2, 4, 6]
        assert run.most == 2
        assert b.running == 0 and b.running_since == 0.0
        # overlapping batches: the drain times cover the wall time once, not once per batch
        assert sum(items for items, _ in run.drained) == 4
        assert 0 < sum(seconds for _, seconds in run.drained) <= elapsed
        await b.close()

    asyncio.run(main())


def test_one_batch_at_a_time_unless_told_and_concurrency_changes_while_serving() -> None:
    async def main() -> None:
        run = Overlap(hold=False)
        b = _concurrent_batcher(run, concurrency=1)
        await b.start()
        await asyncio.gather(*(b.submit(k, i, timeout=60) for i, k in enumerate("abcabc")))
        assert run.most == 1
        b.set_concurrency(2, ThreadPoolExecutor(2))  # what a reload onto ONNX Runtime does
        run.hold = True
        await asyncio.gather(*(b.submit(k, i, timeout=60) for i, k in enumerate("abab")))
        assert run.most == 2
        with pytest.raises(ValueError, match="concurrency"):
            b.set_concurrency(0, None)
        await b.close()

    asyncio.run(main())


def test_close_waits_for_the_batches_still_running() -> None:
    async def main() -> None:
        run = Overlap(hold=True)
        b = _concurrent_batcher(run, concurrency=2)
        await b.start()
        pending = [asyncio.ensure_future(b.submit(k, i, timeout=60)) for i, k in enumerate("ab")]
        await _until(lambda: b.running == 2)
        await b.close()
        assert all(p.done() for p in pending) and [p.result().result for p in pending] == [0, 2]

    asyncio.run(main())
