"""Resident memory (RSS) of a server process: one reading, a sampler over a run, and a bounded wait
for it to come back down.

Example::

    with RssSampler(pid, interval_s=1.0) as sampler:
        run_k6(...)
    sampler.samples          # [(seconds since start, bytes), ...]
    settled, rss = wait_rss_at_most(pid, limit_bytes, timeout_s=60)
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class RssSampler:
    """Reads the RSS of ``pid`` every ``interval_s`` on a thread while the ``with`` block runs."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._start = 0.0

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._start, rss_bytes(self.pid)))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(30)
        self.samples.append((time.monotonic() - self._start, rss_bytes(self.pid)))

    @property
    def peak(self) -> int:
        return max(b for _, b in self.samples)


def wait_rss_at_most(pid: int, limit_bytes: int, timeout_s: float, poll_s: float = 0.5) -> tuple[bool, int]:
    """Poll until the RSS of ``pid`` is at most ``limit_bytes`` (True, rss) or ``timeout_s`` passed
    (False, the last reading). The wait only runs long when memory does not come back."""
    deadline = time.monotonic() + timeout_s
    while True:
        rss = rss_bytes(pid)
        if rss <= limit_bytes:
            return True, rss
        if time.monotonic() >= deadline:
            return False, rss
        time.sleep(poll_s)
