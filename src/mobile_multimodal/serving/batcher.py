"""Dynamic batching: concurrent requests that can share one model call are run as one batch.

Requests are queued under a *key* (here ``(task, max_tokens)``: only requests with the same task
and generation budget can share a forward pass). One collector task forms batches: it takes the
key whose oldest request has waited longest, waits until that key has ``max_batch_size`` requests
or ``max_wait_s`` have passed since the oldest arrived (or since the model became free, if that
is later: a request that waited out a busy model still gets its peers), then runs the batch in
the executor (the model's single worker thread, so the event loop keeps answering ``/alive`` and
``/metrics``). While a batch runs, new requests pile up, so under load batches grow on their
own, and no request waits more than ``max_wait_s`` for an idle model.

Waiting only pays when more requests are on their way. With ``arriving`` (a count of requests
that have entered the service but are still being decoded, not yet queued) the collector waits
only while someone is arriving, or while fewer requests are queued than the last batch had (the
clients just answered are likely sending their next request). So a lone client is served at
once instead of idling ``max_wait_s`` per request, while a busy service keeps its batches full
instead of alternating a batch of one (the first client back) with a batch of the rest.

``concurrency`` batches may run at once (each on its own ``executor`` thread): a runtime whose
sessions take concurrent calls (ONNX Runtime) keeps the cores busy while one batch waits on its
Python decode loop or on the event loop to hand it the next batch. The next batch is formed only
when one may start, so it still takes every request queued by then; its drain time is counted
from the later of its start and the previous batch's end, so overlapping batches add up to the
model's real rate.

A batch that raises is not the end of its requests: each is run again alone, so only the one
the model refuses gets the error, never the strangers it was batched with.

Backpressure: at most ``max_queue`` requests wait; the next is refused at once with
:class:`QueueFullError` (the route answers 503 + Retry-After) rather than queueing without bound.
A request that times out while still queued is removed and never runs. ``on_batch(items,
seconds)`` hears each batch's drain time (from when it could have started to its end): the
engine's admission by expected wait (admission.py) is measured from it.

Example::

    batcher = DynamicBatcher(lambda key, items: [x * 2 for x in items], max_batch_size=8,
                             max_wait_s=0.005, max_queue=64, executor=executor)
    await batcher.start()
    outcome = await batcher.submit("double", 21, timeout=1.0)   # outcome.result == 42
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mobile_multimodal.observability import metrics

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
KeyT = TypeVar("KeyT", bound=Hashable)


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests already; try again later."""


class BatcherClosedError(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class BatchOutcome(Generic[ResultT]):
    """One request's result and how it was run."""

    result: ResultT
    batch_size: int
    queued_s: float  # from submit to the start of its batch
    run_s: float  # duration of the batch's model call


class BatchLoop(ABC):
    """What every batcher shares: one loop task (``_loop``, a subclass's), a wake-up event, the
    queued count against ``max_queue``, and the lifecycle: ``start``, ``close`` (refuse new
    requests, finish the queued ones, stop), ``poke``, ``depth``."""

    loop_name = "batcher"

    def __init__(self, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @abstractmethod
    async def _loop(self) -> None:
        """Form and run batches until ``close`` (each batcher's own policy)."""

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.loop_name)

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def poke(self) -> None:
        """Re-check the queues (an expected arrival gave up before it was queued)."""
        self._wakeup.set()

    @property
    def depth(self) -> int:
        """Requests queued and not yet running."""
        return self._queued

    def _check_room(self, task: str) -> None:
        """Before queueing a request of ``task``: BatcherClosedError while closing, QueueFullError
        (counted) when ``max_queue`` wait already."""
        if self._closing:
            raise BatcherClosedError("the batcher is shutting down")
        if self._task is None:
            raise RuntimeError(f"{type(self).__name__}.start() was not awaited")
        if self._queued >= self.max_queue:
            metrics.QUEUE_REJECTIONS.labels(task).inc()
            raise QueueFullError(f"{self._queued} requests are already queued (max_queue={self.max_queue})")


@dataclass
class _Pending(Generic[ItemT]):
    item: ItemT
    future: asyncio.Future[BatchOutcome[object]]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(BatchLoop, Generic[KeyT, ItemT, ResultT]):
    """Groups concurrent :meth:`submit` calls with the same key into one ``run_batch`` call.

    ``run_batch(key, items)`` runs in ``executor`` and must return one result per item, in order.
    ``label(key)`` names the key in the metrics (the ``task`` label).
    """

    def __init__(
        self,
        run_batch: Callable[[KeyT, list[ItemT]], list[ResultT]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        executor: Executor | None = None,
        label: Callable[[KeyT], str] = str,
        arriving: Callable[[], int] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        super().__init__(max_queue)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._executor = executor
        self._label = label
        self._arriving = arriving
        self._on_batch = on_batch
        self._queues: dict[KeyT, deque[_Pending[ItemT]]] = {}
        self.batches_run = 0
        self.largest_batch = 0
        self._last_batch_size = 0
        self._last_batch_end = 0.0
        # At most ``concurrency`` batches run at once (``executor`` needs as many threads); the
        # next is formed only when one of them may start, so it takes every request queued by then.
        self.concurrency = concurrency
        self._started = 0  # batches formed or running
        self._slot_freed = asyncio.Event()
        self._running: dict[int, tuple[int, float]] = {}  # batch id -> (requests, started)
        self._batch_ids = itertools.count()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._last_drained = 0.0  # when the last batch ended, for each batch's drain time

    @property
    def running(self) -> int:
        """Requests in the batches the model runs now."""
        return sum(n for n, _ in self._running.values())

    @property
    def running_since(self) -> float:
        """When the oldest of the running batches started (perf_counter); 0.0 when none runs."""
        return min((started for _, started in self._running.values()), default=0.0)

    loop_name = "dynamic-batcher"

    # --- submitting ---------------------------------------------------------------------------
    async def submit(self, key: KeyT, item: ItemT, timeout: float) -> BatchOutcome[ResultT]:
        """Queue ``item`` under ``key`` and wait for its result (at most ``timeout`` seconds).

        Raises :class:`QueueFullError`, :class:`BatcherClosedError`, ``TimeoutError``, or whatever
        ``run_batch`` raised for the batch.
        """
        self._check_room(self._label(key))
        future: asyncio.Future[BatchOutcome[object]] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future)
        self._queues.setdefault(key, deque()).append(pending)
        self._queued += 1
        self._publish_depth(key)
        self._wakeup.set()
        try:
            outcome = await asyncio.wait_for(future, timeout)
        except (TimeoutError, asyncio.CancelledError):
            self._discard(key, pending)
            raise
        return outcome  # type: ignore[return-value]

    def _discard(self, key: KeyT, pending: _Pending[ItemT]) -> None:
        """Drop a request that gave up while still queued, so it never runs."""
        queue = self._queues.get(key)
        if queue is not None and pending in queue:
            queue.remove(pending)
            self._queued -= 1
            self._publish_depth(key)

    def _publish_depth(self, key: KeyT) -> None:
        label = self._label(key)
        depth = sum(len(q) for k, q in self._queues.items() if self._label(k) == label)
        metrics.QUEUE_DEPTH.labels(label).set(depth)

    # --- forming and running batches ----------------------------------------------------------
    def _oldest_key(self) -> KeyT | None:
        oldest: tuple[float, KeyT] | None = None
        for key, queue in self._queues.items():
            if queue and (oldest is None or queue[0].enqueued < oldest[0]):
                oldest = (queue[0].enqueued, key)
        return None if oldest is None else oldest[1]

    def _expect_more(self, queued: int) -> bool:
        if self._arriving is None:
            return True  # no signal: always allow max_wait_s for the batch to fill
        return self._arriving() > 0 or queued < self._last_batch_size

    def set_concurrency(self, concurrency: int, executor: Executor | None) -> None:
        """Run up to ``concurrency`` batches at once from now on, on ``executor`` (a served model
        swapped for one of another runtime brings its own; batches already running finish)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency, self._executor = concurrency, executor
        self._slot_freed.set()

    async def _take_slot(self) -> None:
        while self._started >= self.concurrency:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        self._started += 1

    def _free_slot(self) -> None:
        self._started -= 1
        self._slot_freed.set()

    async def _loop(self) -> None:
        while True:
            await self._take_slot()  # the model can take one more batch
            formed = await self._form_batch()
            if formed is None:  # closing, nothing queued: let the running batches finish
                self._free_slot()
                await asyncio.gather(*self._in_flight)
                return
            if self.concurrency == 1:
                await self._run_and_free(*formed)
            else:
                task = asyncio.create_task(self._run_and_free(*formed))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _run_and_free(self, key: KeyT, batch: list[_Pending[ItemT]], could_start: float) -> None:
        try:
            if batch:
                await self._run_counted(key, batch, could_start)
        finally:
            self._free_slot()

    async def _form_batch(self) -> tuple[KeyT, list[_Pending[ItemT]], float] | None:
        """The next batch (its key, its requests, when it could have started), taken from the
        oldest key's queue; its requests may all have given up (an empty batch). None once closing
        with nothing queued."""
        while True:
            key = self._oldest_key()
            if key is not None:
                break
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        queue = self._queues[key]
        deadline = max(queue[0].enqueued, self._last_batch_end) + self.max_wait_s
        # Wait for the batch to fill, but never past the oldest request's deadline.
        while len(queue) < self.max_batch_size and not self._closing:
            if not self._expect_more(len(queue)):
                break  # nobody else is on the way: waiting would only add latency
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
        self._queued -= len(batch)
        if not queue:
            del self._queues[key]
        self._publish_depth(key)
        batch = [p for p in batch if not p.future.done()]
        # The batch's drain time runs from when it could have started: the previous
        # batch's end, or its oldest request's arrival if the model was idle then.
        could_start = max(self._last_batch_end, min((p.enqueued for p in batch), default=0.0))
        return key, batch, could_start

    async def _run_counted(self, key: KeyT, batch: list[_Pending[ItemT]], could_start: float) -> None:
        batch_id = next(self._batch_ids)
        self._running[batch_id] = (len(batch), time.perf_counter())
        try:
            await self._run(key, batch)
        finally:
            del self._running[batch_id]
        # Batches that overlap drain from the later of their start and the last batch's end, so
        # the drain times add up to the time the model took for all of them (admission's rate).
        end = self._last_batch_end
        drained, self._last_drained = end - max(could_start, self._last_drained), max(end, self._last_drained)
        if self._on_batch is not None:
            self._on_batch(len(batch), max(0.0, drained))

    async def _run(self, key: KeyT, batch: list[_Pending[ItemT]]) -> None:
        """Run a batch; if it raises, run each of its requests alone, so that one bad request
        (an input the model refuses, say) fails alone and its batch-mates still get results."""
        try:
            results, start, run_s = await self._call(key, batch)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            log.warning(
                "a batch of %d %s requests failed (%s); running each alone",
                len(batch),
                self._label(key),
                type(exc).__name__,
            )
            for p in batch:
                if not p.future.done():  # one that gave up meanwhile is not run again
                    await self._run(key, [p])
            return
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(BatchOutcome(result, len(batch), start - p.enqueued, run_s))

    async def _call(self, key: KeyT, batch: list[_Pending[ItemT]]) -> tuple[list[ResultT], float, float]:
        """One ``run_batch`` call in the executor, with its metrics: (results, start, run_s)."""
        loop = asyncio.get_running_loop()
        items = [p.item for p in batch]
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, key, items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        finally:
            run_s = time.perf_counter() - start
            metrics.BATCH_DURATION.labels(metrics.batch_size_label(len(batch)), self._label(key)).observe(
                run_s
            )
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self._last_batch_size = len(batch)
            self._last_batch_end = time.perf_counter()
        return results, start, run_s
