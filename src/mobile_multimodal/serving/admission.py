"""Admission by expected wait: refuse a request the queue would make wait past its budget.

A bound on the *count* of queued requests (``MOBILE_MM_MAX_QUEUE``) says nothing about time: 256
queued captions drain in under 2 s on a quiet machine and in 6 s on a machine whose CPU is busy
answering the refused ones. So the engine also measures how fast its queue really drains and
refuses (503 ``OVERLOADED`` with ``Retry-After``) a request whose expected wait is over the budget
``MOBILE_MM_MAX_QUEUE_WAIT_S`` (at most half of ``MOBILE_MM_REQUEST_TIMEOUT_S``, so an accepted
request is not one the timeout will answer 504).

:class:`DrainRate` is the measurement: the seconds one queued item costs, as the ratio of two
moving averages (items per batch, seconds per batch), fed with every real batch's *cycle*: from
when it could have started (the previous batch's end, or its oldest request's arrival if the
model was idle) to its end. The cycle, not the model call alone, is what a waiting request waits
for: it includes forming the batch and the event loop's own delays under load. Full batches
weigh more than batches of one, so a busy service's estimate follows its busy batches.

:class:`Admission` turns it into decisions, each O(1): :meth:`Admission.expected_wait_s` is the
queued items times the seconds per item, plus what is left of the running batch;
:meth:`Admission.refusal` says why a request must be refused, or None. An engine with nothing
ahead expects no wait, so it always admits (no estimate can starve an idle service).

Example::

    admission = Admission(max_queue=256, budget_s=2.0)
    admission.rate.observe(items=16, seconds=0.12)         # after each batch
    wait = admission.expected_wait_s(waiting=40, running=16, running_for_s=0.05)
    refusal = admission.refusal(queued=40, wait_s=wait)     # None, or Refusal("expected_wait", ...)
    refusal.retry_after_s                                   # whole seconds, >= 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Weight of the newest batch in the moving averages: a few dozen batches (a second or two under
# load) make up the estimate, so it follows a machine that slows down within seconds.
SMOOTHING = 0.2


class DrainRate:
    """Seconds per queued item, from measured batch cycles (see the module doc)."""

    def __init__(self, smoothing: float = SMOOTHING) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self._smoothing = smoothing
        self._items = 0.0
        self._seconds = 0.0

    def observe(self, items: int, seconds: float) -> None:
        """One batch of ``items`` took ``seconds`` of drain time."""
        if items < 1 or seconds < 0:
            return
        if self._items == 0.0:  # the first measurement is the estimate
            self._items, self._seconds = float(items), seconds
            return
        a = self._smoothing
        self._items = a * items + (1 - a) * self._items
        self._seconds = a * seconds + (1 - a) * self._seconds

    @property
    def seconds_per_item(self) -> float:
        """0.0 until a batch was measured (then only the count bound refuses)."""
        return self._seconds / self._items if self._items else 0.0


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: ``reason`` is ``queue_full`` (the count bound) or
    ``expected_wait`` (the time budget); ``expected_wait_s`` of the work ahead of it."""

    reason: str
    message: str
    expected_wait_s: float

    @property
    def retry_after_s(self) -> int:
        """Whole seconds a client should wait: the queue ahead has drained by then, if the rate
        holds. At least 1 (``Retry-After: 0`` invites an immediate retry into the same queue)."""
        return max(1, math.ceil(self.expected_wait_s))


class EngineOverloaded(Exception):
    """Admission refused a request; the service answers 503 ``OVERLOADED`` with ``Retry-After``."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def wait_budget_s(max_queue_wait_s: float, request_timeout_s: float) -> float:
    """The effective budget: the setting, but at most half the request timeout, so that an
    accepted request keeps at least half its time for its own batch and the answer."""
    return min(max_queue_wait_s, request_timeout_s / 2)


class Admission:
    """The engine's admission rules: at most ``max_queue`` items ahead, at most ``budget_s`` of
    expected wait."""

    def __init__(self, max_queue: int, budget_s: float, rate: DrainRate | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.max_queue = max_queue
        self.budget_s = budget_s
        self.rate = rate if rate is not None else DrainRate()

    def expected_wait_s(self, waiting: int, running: int = 0, running_for_s: float = 0.0) -> float:
        """Seconds until the work ahead of a new request has drained: ``waiting`` queued items,
        and what is left of a batch of ``running`` items that started ``running_for_s`` ago."""
        per_item = self.rate.seconds_per_item
        return waiting * per_item + max(0.0, running * per_item - running_for_s)

    def refusal(self, queued: int, wait_s: float) -> Refusal | None:
        """None when a request may enter a queue holding ``queued`` items, ``wait_s`` seconds of
        expected wait ahead of it (:meth:`expected_wait_s`)."""
        if queued >= self.max_queue:
            return Refusal(
                "queue_full", f"{queued} requests are already queued (max_queue={self.max_queue})", wait_s
            )
        if wait_s > self.budget_s:
            return Refusal(
                "expected_wait",
                f"the requests ahead would make this one wait about {wait_s:.1f} s "
                f"(budget {self.budget_s:g} s, MOBILE_MM_MAX_QUEUE_WAIT_S)",
                wait_s,
            )
        return None
