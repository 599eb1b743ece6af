"""The test session leaves no process behind: what it started is gone when it ends.

At start the pytest process becomes a child subreaper (Linux): a process orphaned anywhere below it
(a killed ``serve`` supervisor's workers) is re-parented to pytest instead of init, so it stays
one of pytest's descendants. Every child also inherits ``MMTEST_SESSION`` in its environment
(helpers that drop the ``MOBILE_MM_`` variables keep it), which finds one that escaped the tree
some other way. At session end (after every session fixture
has stopped its servers) whatever is still running is reported, killed, and fails the run.

Example::

    survivors = leftover_processes(wait_s=30)   # [] when the session cleaned up after itself
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
import uuid

import psutil

MARKER = "MMTEST_SESSION"
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
# Helpers of the interpreter itself that end with it (multiprocessing's resource tracker and
# forkserver serve pytest's own process until it exits).
_ENDS_WITH_PYTEST = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def start_session() -> None:
    """Mark this session's children and keep its orphans as descendants (call once, at start)."""
    os.environ[MARKER] = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # a nested session: its own
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _marked(proc: psutil.Process, marker: str) -> bool:
    try:
        return proc.environ().get(MARKER) == marker
    except (psutil.Error, OSError):
        return False


def _candidates() -> list[psutil.Process]:
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    marker = os.environ.get(MARKER)
    if marker:
        for proc in psutil.process_iter():
            if proc.pid != me.pid and proc.pid not in found and _marked(proc, marker):
                found[proc.pid] = proc
    return list(found.values())


def _alive(proc: psutil.Process) -> bool:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(proc.pid, os.WNOHANG)  # ours (subreaper): reap it
            return False
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return not any(helper in cmdline for helper in _ENDS_WITH_PYTEST)


def leftover_processes(wait_s: float) -> list[str]:
    """Processes of this session still running after up to ``wait_s`` seconds (they may be exiting)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p for p in _candidates() if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    described = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            described.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:300]}")
    return described


def kill_leftovers() -> None:
    """SIGKILL what :func:`leftover_processes` found, so one failed run does not leak into the next."""
    for proc in _candidates():
        if _alive(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    psutil.wait_procs(_candidates(), timeout=10)
