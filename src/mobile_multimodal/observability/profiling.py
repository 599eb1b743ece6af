"""Continuous profiling: the guide's ENABLE_PROFILING, CPU_PROFILE_* and MEMORY_PROFILE_* settings.

Every ``cpu.interval_s`` seconds, a CPU profile of the whole process (every thread) is sampled
for ``cpu.duration_s`` seconds and written to ``profiles/cpu/`` as speedscope JSON (open it at
speedscope.app or with ``speedscope FILE``) plus a plain-text top list. Every
``memory.interval_s`` seconds, tracemalloc runs for ``memory.duration_s`` seconds and
``profiles/memory/`` receives the top allocation sites at the end and the diff against the start.

The CPU sampler is a daemon thread reading ``sys._current_frames()``: it needs no ptrace
permission (py-spy does, and containers usually deny it) and costs one stack walk per thread
per sample. Profiles run in background threads; requests never wait for them.

Example::

    profiler = Profiler(config.profiling)
    path = profiler.cpu_profile(duration_s=2)     # blocking; the scheduler calls it in a thread
    await profiler.run()                           # the schedule, until cancelled
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from mobile_multimodal.observability.config import ProfilingConfig
from mobile_multimodal.observability.identity import SERVICE_NAME

_log = logging.getLogger(__name__)
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
_FrameKey = tuple[str, str, int]  # (function, file, first line)


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


def _stack(frame: FrameType | None) -> list[_FrameKey]:
    out: list[_FrameKey] = []
    while frame is not None:
        code = frame.f_code
        out.append((code.co_qualname, code.co_filename, code.co_firstlineno))
        frame = frame.f_back
    out.reverse()  # speedscope wants root first
    return out


class CpuSampler:
    """Samples the stacks of every thread (but its own) until ``duration_s`` has passed."""

    def __init__(self, interval_s: float, stop: threading.Event | None = None) -> None:
        self.interval_s = interval_s
        self.stop = stop if stop is not None else threading.Event()
        self.frames: dict[_FrameKey, int] = {}
        self.samples: dict[int, list[tuple[list[int], float]]] = {}  # thread id -> (stack, weight)

    def _index(self, key: _FrameKey) -> int:
        idx = self.frames.get(key)
        if idx is None:
            idx = self.frames[key] = len(self.frames)
        return idx

    def sample(self, weight: float) -> None:
        me = threading.get_ident()
        for tid, frame in sys._current_frames().items():
            if tid != me:
                stack = [self._index(k) for k in _stack(frame)]
                self.samples.setdefault(tid, []).append((stack, weight))

    def run(self, duration_s: float) -> float:
        start = last = time.perf_counter()
        deadline = start + duration_s
        while (now := time.perf_counter()) < deadline:
            self.sample(now - last if now > last else self.interval_s)
            last = now
            if self.stop.wait(self.interval_s):
                break
        return time.perf_counter() - start

    def speedscope(self, elapsed_s: float, name: str) -> dict[str, Any]:
        names = {t.ident: t.name for t in threading.enumerate()}
        frames = [{"name": f, "file": file, "line": line} for (f, file, line) in self.frames]
        profiles = []
        for tid, samples in sorted(self.samples.items(), key=lambda kv: -len(kv[1])):
            profiles.append(
                {
                    "type": "sampled",
                    "name": f"{names.get(tid, 'thread')} ({tid})",
                    "unit": "seconds",
                    "startValue": 0.0,
                    "endValue": elapsed_s,
                    "samples": [s for s, _ in samples],
                    "weights": [w for _, w in samples],
                }
            )
        return {
            "$schema": SPEEDSCOPE_SCHEMA,
            "name": name,
            "exporter": SERVICE_NAME,
            "activeProfileIndex": 0,
            "shared": {"frames": frames},
            "profiles": profiles,
        }

    def top(self, n: int = 30) -> str:
        """Functions by self samples and by inclusive samples, all threads together."""
        keys = list(self.frames)
        own: Counter[int] = Counter()
        total: Counter[int] = Counter()
        count = 0
        for samples in self.samples.values():
            for stack, _ in samples:
                count += 1
                if stack:
                    own[stack[-1]] += 1
                total.update(set(stack))
        lines = [
            f"{count} samples over {len(self.samples)} threads",
            "",
            "self%  total%  function (file:line)",
        ]
        for idx, n_own in own.most_common(n):
            f, file, line = keys[idx]
            lines.append(f"{100 * n_own / count:5.1f}  {100 * total[idx] / count:6.1f}  {f} ({file}:{line})")
        return "\n".join(lines) + "\n"


class Profiler:
    def __init__(self, cfg: ProfilingConfig) -> None:
        self.cfg = cfg
        self.cpu_dir = cfg.dir / "cpu"
        self.memory_dir = cfg.dir / "memory"
        # Set at shutdown: a profile in progress ends early (and is still written).
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def cpu_profile(self, duration_s: float | None = None) -> Path:
        """Sample all threads for ``duration_s`` (default: the configured one); return the speedscope path."""
        duration = duration_s if duration_s is not None else self.cfg.cpu.duration_s
        sampler = CpuSampler(self.cfg.cpu.sample_interval_ms / 1000, self._stop)
        elapsed = sampler.run(duration)
        self.cpu_dir.mkdir(parents=True, exist_ok=True)
        stamp = _stamp()
        path = self.cpu_dir / f"cpu-{stamp}.speedscope.json"
        path.write_text(
            json.dumps(sampler.speedscope(elapsed, f"{SERVICE_NAME} cpu {stamp}")), encoding="utf-8"
        )
        (self.cpu_dir / f"cpu-{stamp}.top.txt").write_text(sampler.top(), encoding="utf-8")
        _log.info("cpu profile written", extra={"operation": "profiling", "path": str(path)})
        return path

    def memory_profile(self, duration_s: float | None = None) -> tuple[Path, Path]:
        """Trace allocations for ``duration_s``; return the paths of the top and diff reports."""
        duration = duration_s if duration_s is not None else self.cfg.memory.duration_s
        started_here = not tracemalloc.is_tracing()
        if started_here:
            tracemalloc.start(self.cfg.memory.frames)
        try:
            first = tracemalloc.take_snapshot()
            self._stop.wait(duration)
            last = tracemalloc.take_snapshot()
        finally:
            if started_here:  # tracing slows every allocation: only while a window is open
                tracemalloc.stop()
        ignore = (tracemalloc.Filter(False, tracemalloc.__file__),)
        first, last = first.filter_traces(ignore), last.filter_traces(ignore)
        n = self.cfg.memory.top
        self.memory_dir.mkdir(parents=True, exist_ok=True)
        stamp = _stamp()
        top_path = self.memory_dir / f"memory-{stamp}-top.txt"
        diff_path = self.memory_dir / f"memory-{stamp}-diff.txt"
        stats = last.statistics("lineno")
        total = sum(s.size for s in stats)
        top_lines = [f"tracemalloc top {n} allocation sites after {duration:g}s; traced total {total} B", ""]
        top_lines += [str(s) for s in stats[:n]]
        top_path.write_text("\n".join(top_lines) + "\n", encoding="utf-8")
        diff = last.compare_to(first, "lineno")
        diff_lines = [f"tracemalloc growth over {duration:g}s, top {n} by size change", ""]
        diff_lines += [str(s) for s in diff[:n]]
        diff_path.write_text("\n".join(diff_lines) + "\n", encoding="utf-8")
        _log.info("memory profile written", extra={"operation": "profiling", "path": str(top_path)})
        return top_path, diff_path

    async def _every(self, interval_s: float, job: Any) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(job)
            except Exception:
                _log.exception("profiling failed")
            await asyncio.sleep(interval_s)

    async def run(self) -> None:
        """Profile on the configured schedule (first profiles right away) until cancelled."""
        await asyncio.gather(
            self._every(self.cfg.cpu.interval_s, self.cpu_profile),
            self._every(self.cfg.memory.interval_s, self.memory_profile),
        )
