"""A ``serve --workers N`` worker ends with its supervisor.

uvicorn's supervisor starts each worker with multiprocessing's spawn; when the supervisor dies
without stopping them (SIGKILL, the OOM killer) the workers would go on answering on the shared
port, unsupervised, until someone kills them by hand. Two guards make a worker leave within seconds:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends the worker SIGTERM the moment its
  parent exits, even while Python is busy in a long torch call;
- everywhere: a thread blocked on multiprocessing's parent sentinel (a pipe the parent holds open,
  readable once it is gone) sends SIGTERM too.

SIGTERM is the graceful path (in-flight requests finish, telemetry is flushed); if the worker has
not exited ``grace_s`` later, the watch thread ends it with ``os._exit``.

Example::

    exit_with_parent(grace_s=settings.shutdown_grace_s)   # first thing in a worker
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading

from mobile_multimodal.observability.logging import get_logger

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_EXIT_CODE = 70  # EX_SOFTWARE: what a worker that had to be cut off exits with

log = get_logger(__name__)


def _set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when the parent exits (Linux only); True when it took."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    return False


def _watch(sentinel: int, grace_s: float) -> None:
    multiprocessing.connection.wait([sentinel])  # returns once the parent is gone
    log.error("the supervisor is gone: this worker stops", extra={"operation": "shutdown"})
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signal.SIGTERM)  # graceful, as a supervisor's own stop would be
    threading.Event().wait(grace_s)
    os._exit(_EXIT_CODE)  # still here: the drain hung; a worker without a supervisor must not stay


def exit_with_parent(grace_s: float) -> bool:
    """In a worker started by multiprocessing (spawn): end this process when its parent dies.

    Returns False in a process multiprocessing did not start (nothing to watch: ``serve`` with
    one worker is the supervisor itself).
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return False
    _set_parent_death_signal(signal.SIGTERM)
    # The parent may have died before prctl: then no signal comes, but the sentinel is ready.
    threading.Thread(target=_watch, args=(parent.sentinel, grace_s), name="parent-watch", daemon=True).start()
    return True
