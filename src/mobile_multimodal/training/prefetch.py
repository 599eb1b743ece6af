"""Training batches drawn ahead, in worker processes, while the network trains on the current one.

A batch is a pure function of the step (``batches.BatchBuilder.build``), and drawing one is
single-threaded Python and PIL: ~0.29 s of a ~1.1 s step of the bundled model's user-style
recipe on 2 cores, during which the network waits. ``Prefetcher`` calls the same function for
the next steps in worker processes, so a run sees exactly the batches it would have drawn itself
(tested), only sooner: even on 2 cores, where the worker shares them with torch's threads, the
user-style recipe's step ran 1.21-1.31x faster (``auto_workers``, ``benchmarks/training/``).

Workers are forked where the platform can (as torch's DataLoader does on Linux), so a script
that calls ``train_model`` needs no ``if __name__ == "__main__"`` guard and the builder (easy-VQA's
images included, ~50 MB) is inherited, not pickled; elsewhere they are spawned and receive it
pickled once. Each worker first drops to one torch thread: with one thread torch's parallel
loops run inline and never enter the OpenMP pool the parent's threads left behind, which a
forked child cannot use. A worker's exception is re-raised by ``get`` for the step that raised
it; a worker that dies ends ``get`` with an error saying so.

Example::

    with Prefetcher(builder.build, workers=1) as batches:
        for step in range(start, end):
            batch = batches.get(step)     # builder.build(step), drawn while step - 1 trained
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")

START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
# set in each worker by _install: the function the parent handed over
_worker_fn: Callable[[int], Any] | None = None


def _install(fn: Callable[[int], Any]) -> None:
    global _worker_fn
    import torch

    torch.set_num_threads(1)  # the training process keeps the cores' threads
    _worker_fn = fn


def _call(step: int) -> Any:
    if _worker_fn is None:  # pragma: no cover - _install always runs first
        raise RuntimeError("prefetch worker started without its function")
    return _worker_fn(step)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(world_size: int = 1) -> int:
    """``--data-workers``' default: one worker for a single training process on 2 cores or more,
    else none. Measured on 2 cores beside torch's 2 threads (``benchmarks/training/``, two runs
    of 4 rounds): the user-style recipe's step 1.21x and 1.31x faster with the worker, the
    64-px ``default`` preset's 0.95x and 1.05x (its batches are cheaper to draw). Several
    data-parallel processes already share the cores: none."""
    return 1 if world_size == 1 and usable_cores() >= 2 else 0


class Prefetcher(Generic[T]):
    """``fn(step)`` for ``get(step)``, with the ``ahead`` steps after it already being drawn.

    ``workers=0`` calls ``fn`` in this process (no prefetch). ``get`` may be called with any
    step; the steps ahead of the last one asked for are what is drawn early, never ``end`` or
    later when given (a training run's last step is ``end - 1``: nothing is drawn for steps
    that will not run)."""

    def __init__(
        self, fn: Callable[[int], T], workers: int = 1, ahead: int = 2, end: int | None = None
    ) -> None:
        if workers < 0:
            raise ValueError(f"--data-workers must be >= 0, got {workers}")
        if ahead < 1:
            raise ValueError(f"ahead must be >= 1, got {ahead}")
        self._fn = fn
        self._ahead = max(ahead, workers)
        self._end = end
        self._pending: dict[int, Future[T]] = {}
        self._pool: ProcessPoolExecutor | None = None
        if workers:
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context(START_METHOD),
                initializer=_install,
                initargs=(fn,),
            )

    def _submit(self, step: int) -> Future[T]:
        assert self._pool is not None
        future = self._pending.get(step)
        if future is None:
            future = self._pool.submit(_call, step)
            self._pending[step] = future
        return future

    def get(self, step: int) -> T:
        if self._pool is None:
            return self._fn(step)
        future = self._submit(step)
        last = step + self._ahead if self._end is None else min(step + self._ahead, self._end - 1)
        for later in range(step + 1, last + 1):
            self._submit(later)
        # drop what was drawn ahead for steps that will not be asked for now (a jump back/ahead)
        for stale in [s for s in self._pending if s < step or s > step + self._ahead]:
            self._pending.pop(stale).cancel()
        del self._pending[step]
        try:
            return future.result()
        except BrokenProcessPool as err:
            raise RuntimeError(
                f"the batch worker process died while drawing step {step} (out of memory?); "
                "rerun with --data-workers 0 to draw batches in the training process"
            ) from err

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
