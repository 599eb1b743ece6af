"""Continuous (iteration-level) batching: captions and answers join and leave the decode at every token.

The static :class:`~mobile_multimodal.serving.batcher.DynamicBatcher` runs a batch to its end: a
5-word caption waits for the 20-word caption beside it, and a request arriving meanwhile waits
for the whole batch. Here one loop drives the model thread one *iteration* at a time:

1. single-pass jobs (OCR, retrieval) waiting: at most one batch per (task, max_tokens) key, up to
   ``max_batch_size`` jobs, run as today (``batch_jobs.run_batch``);
2. decode jobs (captioning, VQA) waiting, oldest first, as many as there are free rows (at most
   ``max_rows`` = ``MOBILE_MM_MAX_BATCH_SIZE`` decode at once): their images are encoded in one
   encoder pass per task and they join the running batch (``model/task_decoding.py``). While
   rows decode, free rows are filled in groups (half of ``max_rows``, or ``ADMIT_AFTER_STEPS``
   steps after the first of them freed): an encoder pass and a prefill cost several decode
   steps, for one image about as much as for eight;
3. one decode step: one token for every active row; rows that finished leave, and their
   requests' futures are resolved as soon as the iteration returns.

Fairness: decode jobs are admitted in arrival order, and every row ends within its token budget
(at most the decoder's context), so a waiting job waits for at most the rows ahead of it (plus
``ADMIT_AFTER_STEPS`` steps per free row), never for later arrivals; single-pass jobs run at every iteration
whatever the decode holds. A job whose request gave up (timeout, client gone: its ``cancelled``
event) is dropped while queued, or leaves the decode at the next step.

Reload: rows keep decoding on the model they started on; new rows wait until those have left
(at most one row's budget), then start on the new model. Background slices (canary, shadow) and
the reload's swap run on the model thread between iterations.

What a "batch" is here, for the metrics: one iteration. ``batch_processing_duration_seconds`` gets
one observation per iteration per decoded task present, ``batch_size`` = that task's rows in the
step and the duration = the iteration's (admission prefill included); single-pass batches are
observed as the static batcher does. A request's ``BatchOutcome.batch_size`` is the most rows it
decoded beside (itself included), ``queued_s`` from submit to its admission and ``run_s`` from
its admission to its last token. The drain rate (admission.py) hears completed requests and the
time their iterations took, so ``expected_wait`` stays seconds per request.

Example::

    batcher = ContinuousBatcher(model=lambda: engine.model, run_single_pass=run, max_rows=16,
                                max_batch_size=16, max_queue=256, executor=model_thread)
    await batcher.start()
    outcome = await batcher.submit(("captioning", 32), Job(image), timeout=30)
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.task_decoding import DECODED_TASKS, TaskDecoding, TaskRequest, TaskResult
from mobile_multimodal.observability import metrics
from mobile_multimodal.serving.batch_jobs import BatchKey, Job
from mobile_multimodal.serving.batcher import BatchLoop, BatchOutcome
from mobile_multimodal.serving.bundle_decoding import BundleTaskDecoding, decodes_continuously
from mobile_multimodal.serving.domain_flags import annotate

log = logging.getLogger(__name__)

Result = dict[str, Any]
# The longest a waiting job waits for free rows to fill a group (see ContinuousBatcher._take).
ADMIT_AFTER_STEPS = 12
# Iterations per turn on the model thread before it is handed back (a reload's swap, an urgent
# background slice and the event loop's own model calls wait at most this long).
DRIVE_ITERATIONS = 16
RESULT_FIELD = {"captioning": "caption", "vqa": "answer"}


@dataclass(eq=False)
class _Pending:
    key: BatchKey
    job: Job
    future: asyncio.Future[BatchOutcome[Result]]
    enqueued: float = field(default_factory=time.perf_counter)
    enqueued_step: int = 0
    admitted: float = 0.0
    peak_rows: int = 0


@dataclass
class _Iteration:
    """What one iteration did, handed back to the event loop."""

    outcomes: list[tuple[_Pending, Result | BaseException]] = field(default_factory=list)
    seconds: float = 0.0
    ended: float = 0.0


Decoding = TaskDecoding | BundleTaskDecoding


def supports_continuous(model: object) -> bool:
    """Continuous decoding needs a step API: the PyTorch model's (``model/task_decoding.py``) or
    a bundle whose ``decoder_step`` takes a batch on ONNX Runtime (``bundle_decoding.py``)."""
    return isinstance(model, MobileMultiModalLLM) or decodes_continuously(model)


def new_decoding(model: Any) -> Decoding:
    """The running batch for ``model`` (one that ``supports_continuous``)."""
    if isinstance(model, MobileMultiModalLLM):
        return TaskDecoding(model)
    return BundleTaskDecoding(model)


class ContinuousBatcher(BatchLoop):
    """Drives the model thread one decode step at a time (see the module doc)."""

    def __init__(
        self,
        *,
        model: Callable[[], Any],
        run_single_pass: Callable[[BatchKey, list[Job]], list[Result]],
        max_rows: int,
        max_batch_size: int,
        max_queue: int,
        executor: Executor | None,
        domain_tasks: Callable[[], str] = lambda: "captioning",
        on_batch: Callable[[int, float], None] | None = None,
        busy: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        super().__init__(max_queue)
        if max_rows < 1 or max_batch_size < 1:
            raise ValueError("max_rows and max_batch_size must be >= 1")
        self._model = model
        self._run_single_pass = run_single_pass
        self.max_rows = max_rows
        self._admit_group = max(1, max_rows // 2)
        self._free_since = -1  # the step since which rows have been free while jobs wait
        self.max_batch_size = max_batch_size
        self._executor = executor
        self._domain_tasks = domain_tasks
        self._on_batch = on_batch
        self._busy = busy
        self._decode_queue: deque[_Pending] = deque()
        self._single_queues: dict[BatchKey, deque[_Pending]] = {}
        self._active: dict[int, _Pending] = {}  # id(pending) -> pending, rows decoding now
        self._decoding: Decoding | None = None  # touched on the model thread only
        self._lock = threading.Lock()  # the queues and the active rows: event loop vs model thread
        self._last_end = 0.0
        self._drain_items = 0
        self._drain_s = 0.0
        self.steps = 0  # decode steps run
        self.batches_run = 0  # iterations run
        self.largest_batch = 0  # most rows decoding at once
        self.running = 0  # requests in the model now (decoding rows), for idle checks
        self.running_since = 0.0  # the last time a request completed

    loop_name = "continuous-batcher"

    def slot_wait(self) -> tuple[int, float]:
        """(running, running_for_s) for the expected wait (admission.py): a new request waits for
        one row to finish only when every row is taken; it joins at the next step otherwise."""
        if len(self._active) < self.max_rows:
            return 0, 0.0
        return 1, time.perf_counter() - self.running_since

    # --- submitting ---------------------------------------------------------------------------
    async def submit(self, key: BatchKey, job: Job, timeout: float) -> BatchOutcome[Result]:
        """Queue ``job`` and wait for its result (at most ``timeout`` s); raises as DynamicBatcher."""
        self._check_room(key[0])
        pending = _Pending(key, job, asyncio.get_running_loop().create_future(), enqueued_step=self.steps)
        with self._lock:
            if key[0] in DECODED_TASKS:
                queue = self._decode_queue
            else:
                queue = self._single_queues.setdefault(key, deque())
            queue.append(pending)
            self._queued += 1
            self._publish_depth(key[0])
        self._wakeup.set()
        try:
            return await asyncio.wait_for(pending.future, timeout)
        except (TimeoutError, asyncio.CancelledError):
            with self._lock:
                if pending in queue:  # still queued: it never runs (once decoding, engine.admit stops it)
                    queue.remove(pending)
                    self._queued -= 1
                    self._publish_depth(key[0])
            raise

    def _publish_depth(self, task: str) -> None:
        if task in DECODED_TASKS:
            depth = sum(1 for p in self._decode_queue if p.key[0] == task)
        else:
            depth = sum(len(q) for k, q in self._single_queues.items() if k[0] == task)
        metrics.QUEUE_DEPTH.labels(task).set(depth)

    # --- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        """Hands the model thread to :meth:`_drive` whenever there is work; results come back
        through ``call_soon_threadsafe`` as each iteration ends, not when the drive returns."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._queued and not self._active:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await loop.run_in_executor(self._executor, self._drive, loop)
            except Exception as exc:  # a bug, not a bad request (those fail alone): fail them all
                log.exception("continuous batching failed")
                with self._lock:
                    failed = list(self._active.values())
                    self._active.clear()
                    self.running = 0
                self._settle(_Iteration([(p, exc) for p in failed]), 0.0)

    def _take(self) -> tuple[list[_Pending], list[tuple[BatchKey, list[_Pending]]]]:
        """This iteration's admissions (free rows, oldest first) and single-pass batches; under
        the lock."""
        admit: list[_Pending] = []
        decoding = self._decoding
        stale = decoding is not None and self._active and decoding.model is not self._model()
        free = 0 if stale else self.max_rows - len(self._active)  # a reload: let the old rows leave
        # An encoder pass and a prefill cost several decode steps whether they take one image or
        # eight, so while rows decode, free rows are filled in groups: once half of them are free,
        # or ADMIT_AFTER_STEPS steps after the first of them freed (the bound on a job's wait for
        # a free row; admission stays first come, first served).
        if free > 0 and self._decode_queue:
            self._free_since = self.steps if self._free_since < 0 else self._free_since
        else:
            self._free_since = -1
        if self._active and free < self._admit_group and self.steps - self._free_since < ADMIT_AFTER_STEPS:
            free = 0
        while self._decode_queue and len(admit) < free:
            admit.append(self._decode_queue.popleft())
        single = []
        for key in list(self._single_queues):
            queue = self._single_queues[key]
            group = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
            if not queue:
                del self._single_queues[key]
            single.append((key, group))
        self._queued -= len(admit) + sum(len(g) for _, g in single)
        for task in {p.key[0] for p in admit} | {k[0] for k, _ in single}:
            self._publish_depth(task)
        # a request that gave up while queued is not run
        admit = [p for p in admit if not p.future.done()]
        now = time.perf_counter()
        for p in admit:
            p.admitted = now
            self._active[id(p)] = p
        self.running = len(self._active)
        single = [(k, [p for p in g if not p.future.done()]) for k, g in single]
        return admit, [(k, g) for k, g in single if g]

    def _drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the model thread: iterations until no work is left, or DRIVE_ITERATIONS of them
        (then the thread is handed back, so a reload's swap or an urgent slice can run)."""
        for _ in range(DRIVE_ITERATIONS):
            with self._lock:
                was_busy = bool(self._active)
                admit, single = self._take()
            if not admit and not single and not self._active:
                return
            # the cycle runs from when this work could have started: the last iteration's end,
            # or (the model idle) the arrival of the work it takes now
            arrivals = [p.enqueued for p in admit] + [p.enqueued for _, g in single for p in g]
            could_start = self._last_end if was_busy or not arrivals else max(self._last_end, min(arrivals))
            try:
                report = self._iterate(admit, single)
            except Exception as exc:  # a bug, not a bad request (those fail alone): fail them all
                log.exception("a continuous-batching iteration failed")
                if self._decoding is not None:
                    self._decoding.clear()
                with self._lock:
                    failed = [*self._active.values(), *(p for _, g in single for p in g)]
                report = _Iteration([(p, exc) for p in failed])
            self._last_end = time.perf_counter()
            with self._lock:
                for p, _ in report.outcomes:
                    self._active.pop(id(p), None)
                self.running = len(self._active)
            loop.call_soon_threadsafe(self._settle, report, self._last_end - could_start)

    def _settle(self, report: _Iteration, cycle_s: float) -> None:
        """On the event loop: resolve what finished, feed the drain rate."""
        for p, outcome in report.outcomes:
            if p.future.done():
                continue
            if isinstance(outcome, BaseException):
                p.future.set_exception(outcome)
                continue
            start = p.admitted or self._last_end - report.seconds
            end = report.ended or self._last_end
            p.future.set_result(BatchOutcome(outcome, max(1, p.peak_rows), start - p.enqueued, end - start))
        self._drain_items += len(report.outcomes)
        self._drain_s += cycle_s
        if report.outcomes:
            self.running_since = report.ended or self._last_end
            if self._on_batch is not None:
                self._on_batch(self._drain_items, self._drain_s)
            self._drain_items, self._drain_s = 0, 0.0

    # --- one iteration, on the model thread ---------------------------------------------------
    def _iterate(self, admit: list[_Pending], single: list[tuple[BatchKey, list[_Pending]]]) -> _Iteration:
        report = _Iteration()
        start = time.perf_counter()
        with self._busy():
            for key, group in single:
                self._single(key, group, report)
            if admit:
                self._admit(admit, report)
            self._step(report)
        report.ended = time.perf_counter()
        report.seconds = report.ended - start
        self.batches_run += 1
        return report

    def _single(self, key: BatchKey, group: list[_Pending], report: _Iteration) -> None:
        start = time.perf_counter()
        try:
            results = self._run_single_pass(key, [p.job for p in group])
            report.outcomes += list(zip(group, results, strict=True))
        except Exception as exc:
            if len(group) == 1:
                report.outcomes.append((group[0], exc))
            else:  # one bad job fails alone, as with static batching
                for p in group:
                    self._single(key, [p], report)
                return
        metrics.BATCH_DURATION.labels(metrics.batch_size_label(len(group)), key[0]).observe(
            time.perf_counter() - start
        )

    def _decoding_for(self, model: Any) -> Decoding:
        if self._decoding is None or (self._decoding.model is not model and not len(self._decoding)):
            self._decoding = new_decoding(model)
        return self._decoding

    def _admit(self, admit: list[_Pending], report: _Iteration) -> None:
        model = self._model()
        if not supports_continuous(model):  # another model type (a test's double): static batches
            for key in dict.fromkeys(p.key for p in admit):
                self._single(key, [p for p in admit if p.key == key], report)
            return
        decoding = self._decoding_for(model)
        domain = self._domain_tasks().split(",")
        requests = [
            TaskRequest(
                p.key[0],
                p.job.image,
                p.key[1],
                question=p.job.question,
                stop=p.job.cancelled,
                domain=p.key[0] in domain and hasattr(model, "out_of_domain"),
                tag=p,
            )
            for p in admit
        ]
        try:
            done, refused = decoding.admit(requests)
        except Exception:  # the encoder or a prefill failed: admit each alone, so only it fails
            done, refused = [], {}
            for i, request in enumerate(requests):
                try:
                    alone_done, alone_refused = decoding.admit([request])
                except Exception as exc:
                    alone_done, alone_refused = [], {0: exc}
                done += alone_done
                if alone_refused:
                    refused[i] = next(iter(alone_refused.values()))
        report.outcomes += [(admit[i], exc) for i, exc in refused.items()]
        report.outcomes += self._results(model, done)

    def _step(self, report: _Iteration) -> None:
        decoding = self._decoding
        if decoding is None or not len(decoding):
            return
        rows = decoding.requests
        for r in rows:
            pending = r.tag
            assert isinstance(pending, _Pending)
            pending.peak_rows = max(pending.peak_rows, len(rows))
        self.largest_batch = max(self.largest_batch, len(rows))
        start = time.perf_counter()
        try:
            finished = decoding.step()
        except Exception as exc:  # the batch's state is unknown now: its requests fail
            log.exception("a decode step of %d rows failed", len(rows))
            report.outcomes += [(r.tag, exc) for r in decoding.clear() if isinstance(r.tag, _Pending)]
            return
        self.steps += 1
        seconds = time.perf_counter() - start
        for task, n in Counter(r.task for r in rows).items():
            metrics.BATCH_DURATION.labels(metrics.batch_size_label(n), task).observe(seconds)
        report.outcomes += self._results(decoding.model, finished)

    def _results(self, model: Any, done: list[TaskResult]) -> list[tuple[_Pending, Result | BaseException]]:
        out: list[tuple[_Pending, Result | BaseException]] = []
        for r in done:
            pending = r.tag
            assert isinstance(pending, _Pending)
            task = pending.key[0]
            result: Result = {RESULT_FIELD[task]: r.text, "confidence": round(r.confidence, 6)}
            try:
                scores = [r.domain_score] if r.domain_score is not None else None
                embeddings = [r.domain_embedding] if r.domain_embedding is not None else None
                image = [pending.job.image]
                annotate(model, task, image, [result], self._domain_tasks(), scores, embeddings)
            except Exception as exc:
                out.append((pending, exc))
                continue
            out.append((pending, result))
        return out


def warm_up_decoding(model: Any, image: Any) -> None:
    """One caption and one answer through the continuous path (the engine's warm-up)."""
    if not supports_continuous(model):
        return
    decoding = new_decoding(model)
    decoding.admit(
        [TaskRequest("captioning", image, 32), TaskRequest("vqa", image, 8, question="what color is it ?")]
    )
    for _ in range(64):  # every row ends within its budget (33 steps at most)
        if not len(decoding):
            return
        decoding.step()
    raise RuntimeError("the warm-up decode did not finish within its budget")
