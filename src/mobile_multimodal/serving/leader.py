"""Which process runs the once-per-server duties when ``mobile-mm serve --workers N`` forks N.

Under ``--workers N`` every worker runs the whole app, and Prometheus multiprocess mode *sums*
counters over the workers. Duties that count or write something once per server (recording the
configuration at start, counting a tampering incident, mirroring backup runs, scheduled
backups) must then run in one worker only, or ``config_changes_total`` would read N after one
change. The leader is whoever holds an exclusive ``flock`` on ``leader.lock`` in the metrics
directory (``PROMETHEUS_MULTIPROC_DIR``, which ``serve --workers N`` creates): the kernel
releases it when that process dies, and the next worker that asks takes over. Without that
directory there is one process, and it leads.

Example::

    leader = WorkerLeader.for_this_process()
    if leader.is_leader():
        record_config_state(db, settings)
    ...
    leader.release()    # at shutdown
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_NAME = "leader.lock"


class WorkerLeader:
    """A non-blocking leadership claim; ``lock_path=None`` means a single process (always leader)."""

    def __init__(self, lock_path: Path | None) -> None:
        self.lock_path = lock_path
        self._fd: int | None = None

    @classmethod
    def for_this_process(cls) -> WorkerLeader:
        directory = os.environ.get(MULTIPROC_ENV)
        return cls(Path(directory) / LOCK_NAME if directory else None)

    def is_leader(self) -> bool:
        """True if this process leads; tries to take the lock if nobody holds it. Cheap to call often."""
        if self.lock_path is None or self._fd is not None:
            return True
        import fcntl  # POSIX only, like uvicorn's multiprocess mode itself

        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for an operator wondering who leads
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
