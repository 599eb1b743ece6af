"""Anomalous request detection: three small rules an operator can reason about.

- ``oversized_body``: a ``Content-Length`` above ``MOBILE_MM_MAX_BODY_BYTES``. The request is
  refused (413) before its body is read.
- ``path_traversal``: a ``..`` segment or a NUL byte in the path or query, also percent-encoded
  once or twice — no route or parameter of ours contains them, so only a probe does.
- ``client_error_burst``: ``MOBILE_MM_ANOMALY_ERROR_BURST`` 4xx answers to one source IP within
  ``MOBILE_MM_ANOMALY_WINDOW_S`` (key guessing, scanners, a broken client in a retry loop). It
  fires once, then stays quiet for that source for one window, so a flood is one event.

Each hit becomes ``security_events_total{event_type="anomalous_request"}`` plus an audit event
(the security context does that); this module only decides.

Example::

    detector = AnomalyDetector(max_body_bytes=10_000_000, error_burst=20, window_s=60)
    hit = detector.inspect_request("10.0.0.7", "/inference", content_length=50_000_000)
    assert hit is not None and hit.rule == "oversized_body"
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from mobile_multimodal.settings import Settings

# Bounds memory under a spoofed-source flood; stale sources are dropped first.
MAX_TRACKED_SOURCES = 10_000
_SEGMENT_SPLIT = re.compile(r"[/\\?&=;]")


def _is_traversal(raw_path: str) -> bool:
    """A ``..`` segment or a NUL byte, also once or twice percent-encoded (``%2e%2e``, ``%252e``)."""
    once = unquote(raw_path)
    for text in (raw_path, once, unquote(once)):
        if "\x00" in text or ".." in _SEGMENT_SPLIT.split(text):
            return True
    return False


@dataclass(frozen=True)
class Anomaly:
    rule: str  # oversized_body | path_traversal | client_error_burst
    source_ip: str
    detail: str


class AnomalyDetector:
    """Thread-safe; ``clock`` is injectable so tests can step through a window."""

    def __init__(
        self,
        *,
        max_body_bytes: int,
        error_burst: int = 20,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if error_burst < 2 or window_s <= 0:
            raise ValueError("error_burst must be >= 2 and window_s > 0")
        self.max_body_bytes = max_body_bytes
        self.error_burst = error_burst
        self.window_s = window_s
        self.clock = clock
        self._errors: dict[str, deque[float]] = {}
        self._quiet_until: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AnomalyDetector:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            error_burst=settings.anomaly_error_burst,
            window_s=settings.anomaly_window_s,
        )

    def inspect_request(self, source_ip: str, raw_path: str, content_length: int | None) -> Anomaly | None:
        """Rules decidable from the request line and headers alone."""
        if content_length is not None and content_length > self.max_body_bytes:
            return Anomaly(
                "oversized_body", source_ip, f"Content-Length {content_length} > limit {self.max_body_bytes}"
            )
        if _is_traversal(raw_path):
            return Anomaly("path_traversal", source_ip, f"suspicious path {raw_path[:200]!r}")
        return None

    def observe_response(self, source_ip: str, status: int) -> Anomaly | None:
        """Count 4xx answers per source; returns an anomaly when a burst completes."""
        if not 400 <= status < 500:
            return None
        with self._lock:
            now = self.clock()
            if self._quiet_until.get(source_ip, 0.0) > now:
                return None
            times = self._errors.get(source_ip)
            if times is None:
                if len(self._errors) >= MAX_TRACKED_SOURCES or len(self._quiet_until) >= MAX_TRACKED_SOURCES:
                    self._evict(now)
                times = self._errors[source_ip] = deque(maxlen=self.error_burst)
            times.append(now)
            if len(times) == self.error_burst and now - times[0] <= self.window_s:
                span = now - times[0]
                del self._errors[source_ip]
                self._quiet_until[source_ip] = now + self.window_s
                return Anomaly(
                    "client_error_burst", source_ip, f"{self.error_burst} client errors in {span:.1f} s"
                )
        return None

    def _evict(self, now: float) -> None:
        for ip in [ip for ip, t in self._errors.items() if not t or now - t[-1] > self.window_s]:
            del self._errors[ip]
        for ip in [ip for ip, until in self._quiet_until.items() if until <= now]:
            del self._quiet_until[ip]
        while len(self._errors) >= MAX_TRACKED_SOURCES:  # still full: drop the oldest entries
            del self._errors[next(iter(self._errors))]
        while len(self._quiet_until) >= MAX_TRACKED_SOURCES:
            del self._quiet_until[next(iter(self._quiet_until))]
