"""Failed-authentication audit throttle: a flood of bad keys is a few rows, not one per request.

Every failed authentication is counted in the metrics (``auth_failures_total``,
``security_events_total``). Only the first ``limit`` of them per source IP in each window of
``window_s`` seconds become an audit row and a log line each; the rest of that window are
counted here and written as **one** ``auth.authenticate.suppressed`` row when the window closes
(with how many, why, and when), so the trail still says what happened without a write storm:
200 bad keys in a second from one address are ``limit`` rows plus one summary.

A window's summary is written when that source fails again after the window, or by the periodic
:meth:`FailureAuditThrottle.closed_windows` sweep the server runs (serving/background.py), or at
shutdown (``final=True``), whichever comes first. Memory is bounded: at most ``max_sources``
addresses are tracked; past that, new ones share one ``"*"`` entry (still throttled).

Example::

    throttle = FailureAuditThrottle(limit=10, window_s=60)
    admit, summary = throttle.admit("203.0.113.9", "invalid", "POST /inference")
    if summary is not None: write_summary(summary)   # the previous window of that source
    if admit: audit.record(...)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

OVERFLOW_SOURCE = "*"


@dataclass(frozen=True)
class SuppressedFailures:
    """The failures of one source in one window that got no row of their own."""

    source_ip: str
    count: int
    reasons: dict[str, int]
    resources: dict[str, int]
    window_s: float
    first_at: str  # ISO 8601, UTC
    last_at: str


@dataclass
class _Window:
    started: float
    admitted: int = 0
    suppressed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    resources: Counter[str] = field(default_factory=Counter)
    first_at: str = ""
    last_at: str = ""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class FailureAuditThrottle:
    """Thread-safe (the auth dependency runs in a thread pool); ``clock`` is injectable for tests."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        *,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_sources < 1:
            raise ValueError("limit and max_sources must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self.max_sources = max_sources
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def admit(self, source_ip: str, reason: str, resource: str) -> tuple[bool, SuppressedFailures | None]:
        """Whether this failure gets its own audit row, and the summary of this source's
        previous window if that one closed with failures suppressed (write it first)."""
        now = self.clock()
        closed: SuppressedFailures | None = None
        with self._lock:
            window = self._windows.get(source_ip)
            if window is not None and now - window.started >= self.window_s:
                closed = self._summary(source_ip, window)
                window = None
            if window is None:
                if source_ip not in self._windows and len(self._windows) >= self.max_sources:
                    self._drop_closed(now)
                    if len(self._windows) >= self.max_sources:
                        return self._admit_overflow(now, reason, resource), closed
                window = self._windows[source_ip] = _Window(started=now)
            return self._count(window, reason, resource), closed

    def closed_windows(self, *, final: bool = False) -> list[SuppressedFailures]:
        """Summaries of the windows that are over (all of them with ``final``), forgotten here."""
        now = self.clock()
        out = []
        with self._lock:
            for source, window in list(self._windows.items()):
                if final or now - window.started >= self.window_s:
                    del self._windows[source]
                    summary = self._summary(source, window)
                    if summary is not None:
                        out.append(summary)
        return out

    def _count(self, window: _Window, reason: str, resource: str) -> bool:
        if window.admitted < self.limit:
            window.admitted += 1
            return True
        window.suppressed += 1
        window.reasons[reason] += 1
        window.resources[resource] += 1
        window.last_at = _now_iso()
        if not window.first_at:
            window.first_at = window.last_at
        return False

    def _admit_overflow(self, now: float, reason: str, resource: str) -> bool:
        # The table is full of live windows: the shared entry is one past the bound, and no
        # window is evicted (its suppressed count would be lost from the trail).
        window = self._windows.get(OVERFLOW_SOURCE)
        if window is None:
            window = self._windows[OVERFLOW_SOURCE] = _Window(started=now)
        return self._count(window, reason, resource)

    def _drop_closed(self, now: float) -> None:
        # Windows that closed with nothing suppressed can go; the others wait for the sweep.
        for source, window in list(self._windows.items()):
            if now - window.started >= self.window_s and window.suppressed == 0:
                del self._windows[source]

    def _summary(self, source: str, window: _Window) -> SuppressedFailures | None:
        if window.suppressed == 0:
            return None
        return SuppressedFailures(
            source_ip=source,
            count=window.suppressed,
            reasons=dict(window.reasons),
            resources=dict(window.resources.most_common(10)),
            window_s=self.window_s,
            first_at=window.first_at,
            last_at=window.last_at,
        )
