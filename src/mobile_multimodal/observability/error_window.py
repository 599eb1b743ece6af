"""``error_rate_by_endpoint``: errors per second over a sliding window, kept by the app.

For operators without PromQL at hand (alerts compute rates from the counters instead). Errors
are counted in one-second buckets, so memory stays bounded however high the error rate.

Example::

    window = ErrorRateWindow(window_s=60)
    window.record("/inference", "timeout")
    window.refresh()          # sets the gauge; also called before every /metrics scrape
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from mobile_multimodal.observability import metrics


class ErrorRateWindow:
    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # (endpoint, error_type) -> deque of [second, count], oldest first
        self._buckets: dict[tuple[str, str], deque[list[int]]] = {}

    def record(self, endpoint: str, error_type: str) -> None:
        now = int(self._clock())
        with self._lock:
            buckets = self._buckets.setdefault((endpoint, error_type), deque())
            if buckets and buckets[-1][0] == now:
                buckets[-1][1] += 1
            else:
                buckets.append([now, 1])
        self.refresh()

    def rates(self) -> dict[tuple[str, str], float]:
        """Errors per second over the window, per (endpoint, error_type) seen so far."""
        horizon = self._clock() - self.window_s
        out: dict[tuple[str, str], float] = {}
        with self._lock:
            for key, buckets in self._buckets.items():
                while buckets and buckets[0][0] < horizon:
                    buckets.popleft()
                out[key] = sum(count for _, count in buckets) / self.window_s
        return out

    def refresh(self) -> None:
        """Write the current rates into the gauge; a series that saw no error in the window reads 0."""
        for (endpoint, error_type), rate in self.rates().items():
            metrics.ERROR_RATE_BY_ENDPOINT.labels(endpoint, error_type).set(rate)
