"""One probe inference per interval, however many callers ask: a TTL cache with single flight.

``/model/health`` needs no API key and runs a real inference, so without this a flood of calls
is a flood of inferences that queue in front of paying users' requests. Here concurrent callers
share the one probe in flight (single flight), and for ``ttl_s`` after it finished every caller
gets its answer (``checked_at`` in the body says when it ran). An answer that ran no inference
(the model is not ready yet) is not kept, so readiness shows at once.

A caller that goes away does not cancel the shared probe: the others still wait on it.

Example::

    cache = CachedProbe(lambda: probe(engine), ttl_s=5.0)
    answer = await cache.get()      # runs the probe, or joins the one in flight, or reuses the last
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProbeAnswer:
    """What ``/model/health`` answers, and whether an inference ran to produce it."""

    status_code: int
    body: dict[str, Any]
    ran_inference: bool


class CachedProbe:
    def __init__(
        self,
        run: Callable[[], Awaitable[ProbeAnswer]],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self._run = run
        self.ttl_s = ttl_s
        self._clock = clock
        self._last: ProbeAnswer | None = None
        self._last_at = 0.0
        self._in_flight: asyncio.Future[ProbeAnswer] | None = None
        self.runs = 0  # probes started (each one inference), for tests and debugging

    async def get(self) -> ProbeAnswer:
        if self._last is not None and self._clock() - self._last_at < self.ttl_s:
            return self._last
        if self._in_flight is None:
            self.runs += 1
            self._in_flight = asyncio.ensure_future(self._run_once())
        # shield: one caller hanging up must not cancel the probe the others wait for
        return await asyncio.shield(self._in_flight)

    async def _run_once(self) -> ProbeAnswer:
        try:
            answer = await self._run()
            if answer.ran_inference:
                self._last, self._last_at = answer, self._clock()
            return answer
        finally:
            self._in_flight = None
