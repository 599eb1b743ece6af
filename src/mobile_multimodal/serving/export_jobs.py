"""``POST /export`` jobs: one export at a time, each in a child process, its state in the database.

Why a child process and not a thread: an export is minutes of Python-heavy tracing and
conversion. In a thread it would hold the GIL against the event loop, and torch's thread count
is process-wide, so limiting it for the export would limit the model too. The child
(``python -m mobile_multimodal.serving.export_worker ID``) runs at ``MOBILE_MM_EXPORT_NICE`` with
``MOBILE_MM_EXPORT_THREADS`` torch threads; a crash or an out-of-memory kill there cannot take
the server down; and it is the same recorded, pushed export the CLI runs
(store/recorded_export.py), so its row, metrics and log lines are those of any export.

One at a time, across ``--workers N`` too: the job holds an exclusive ``flock`` on
``<data_dir>/exports/.lock`` while it runs (flock locks are per open file, so they exclude
threads and processes alike, and the kernel drops them when the holder dies). A second
``POST /export`` meanwhile is answered 409 ``EXPORT_IN_PROGRESS`` with ``Retry-After``. Rows
still queued or running when the lock is free belong to a server that died: they are marked
failed (``EXPORT_INTERRUPTED``) before the next job starts.

The bundle goes to ``<data_dir>/exports/<id>``: never a path the client chose.

Example::

    jobs = ExportJobs(settings, database)
    record = jobs.submit(platform="android", fmt="onnx", quantization="int2", requested_by="api:ops/k1")
    get_export(database, record.id).status    # queued -> running -> succeeded | failed
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.errors import ExportErrorCode
from mobile_multimodal.observability.pushgateway import push_export_group
from mobile_multimodal.security.export_audit import audit_export_finished
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database
from mobile_multimodal.store.export_records import (
    UNFINISHED,
    add_export,
    export_group,
    fail_unfinished,
    finish_export,
    get_export,
)
from mobile_multimodal.store.tables import ExportRecord

_log = logging.getLogger("mobile_multimodal.export")
WORKER_MODULE = "mobile_multimodal.serving.export_worker"
JOB_ORIGIN = "api:"  # requested_by of the rows this module runs (CLI exports are "cli:...")
_STOP_GRACE_S = 10.0
_ERROR_TAIL_CHARS = 2000


class ExportBusy(Exception):
    """Another export holds the lock."""


class ExportJobs:
    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.dir = settings.exports_dir
        self._threads: list[threading.Thread] = []

    # --- the lock -----------------------------------------------------------------------------
    def _try_lock(self) -> IO[str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = (self.dir / ".lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ExportBusy from None
        return lock

    def running(self) -> bool:
        """Whether an export runs now, on this server or another worker of it."""
        try:
            self._try_lock().close()  # closing the file releases the lock
        except ExportBusy:
            return True
        return False

    # --- jobs ---------------------------------------------------------------------------------
    def submit(
        self, *, platform: str, fmt: str, quantization: str, requested_by: str, traceparent: str | None = None
    ) -> ExportRecord:
        """Queue an export and start it; raises :class:`ExportBusy` while another one runs."""
        lock = self._try_lock()
        try:
            stale = fail_unfinished(
                self.database,
                str(ExportErrorCode.EXPORT_INTERRUPTED),
                "the server running this export stopped before it finished",
                requested_by_prefix=JOB_ORIGIN,
            )
            if stale:
                _log.warning(
                    "%d unfinished exports marked failed", stale, extra={"operation": "mobile_export"}
                )
            export_id = os.urandom(16).hex()
            record = add_export(
                self.database,
                platform=platform,
                fmt=fmt,
                quantization=quantization,
                requested_by=requested_by,
                model=self.settings.model,
                out_dir=str(self.dir / export_id),
                export_id=export_id,
            )
            thread = threading.Thread(
                target=self._run,
                args=(record, lock, traceparent),
                name=f"export-{export_id[:8]}",
                daemon=True,
            )
            thread.start()
        except BaseException:
            lock.close()
            raise
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return record

    def wait(self, timeout_s: float) -> bool:
        """Wait for this process's jobs to end (tests, shutdown); False if one is still running."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _child_env(self, traceparent: str | None) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
        env.update(
            {
                # the app may have been built from a Settings object, not the environment
                "MOBILE_MM_DATA_DIR": str(s.data_dir),
                "MOBILE_MM_LOG_DIR": str(s.resolved_log_dir),
                "MOBILE_MM_DATABASE_URL": s.resolved_database_url,
                "MOBILE_MM_OBSERVABILITY_CONFIG": str(s.observability_config),
                "MOBILE_MM_EXPORT_NICE": str(s.export_nice),
                "MOBILE_MM_EXPORT_THREADS": str(s.export_threads),
                "OMP_NUM_THREADS": str(s.export_threads),
            }
        )
        env.pop("MOBILE_MM_PUSHGATEWAY_URL", None)
        if s.pushgateway_url:
            env["MOBILE_MM_PUSHGATEWAY_URL"] = s.pushgateway_url
        env.pop("TRACEPARENT", None)
        if traceparent:
            env["TRACEPARENT"] = traceparent
        return env

    def _run(self, record: ExportRecord, lock: IO[str], traceparent: str | None) -> None:
        log_path = self.dir / f"{record.id}.log"
        code: str | None = None
        message = ""
        start = time.perf_counter()
        try:
            with log_path.open("wb") as out:
                child = subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, record.id],
                    env=self._child_env(traceparent),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                try:
                    returncode = child.wait(timeout=self.settings.export_timeout_s)
                except subprocess.TimeoutExpired:
                    code = str(ExportErrorCode.EXPORT_TIMEOUT)
                    message = (
                        f"the export ran longer than {self.settings.export_timeout_s:g} s and was stopped"
                    )
                    # recorded before the child is stopped: the row keeps its first outcome, so
                    # the child's own "interrupted" cannot hide why it was stopped
                    self._settle(record, code, message, time.perf_counter() - start, log_path)
                    _stop(child)
                else:
                    if returncode < 0 or returncode > 1:  # 0 and 1: the child recorded the outcome
                        code = str(ExportErrorCode.EXPORT_PROCESS_FAILED)
                        message = f"the export process exited with {returncode}: {_tail(log_path)}"
        except OSError as exc:
            code, message = (
                str(ExportErrorCode.EXPORT_PROCESS_FAILED),
                f"cannot start the export process: {exc}",
            )
        finally:
            try:
                self._settle(record, code, message, time.perf_counter() - start, log_path)
            finally:
                lock.close()
                self._audit_finish(record.id)

    def _audit_finish(self, export_id: str) -> None:
        try:
            audit_export_finished(self.database, export_id)
        except SQLAlchemyError as exc:  # the log line of AuditLog is lost with the row; say so here
            _log.error(
                "export %s finish not audited: %s", export_id, exc, extra={"operation": "mobile_export"}
            )

    def _settle(
        self, record: ExportRecord, code: str | None, message: str, duration_s: float, log_path: Path
    ) -> None:
        """Fail the row if the child left it unfinished, and push the failure the child could not."""
        current = get_export(self.database, record.id)
        if current is None or current.status not in UNFINISHED:
            return
        finish_export(
            self.database,
            record.id,
            duration_s=duration_s,
            error_code=code or str(ExportErrorCode.EXPORT_PROCESS_FAILED),
            error_message=message or f"the export process ended without an outcome: {_tail(log_path)}",
        )
        _log.error(
            "export job %s failed: %s",
            record.id,
            message,
            extra={
                "operation": "mobile_export",
                "platform": record.platform,
                "format": record.format,
                "quantization": record.quantization,
                "error_code": code,
            },
        )
        if self.settings.pushgateway_url:
            group = export_group(
                self.database,
                host=current.host,
                platform=record.platform,
                fmt=record.format,
                quantization=record.quantization,
            )
            push_export_group(
                self.settings.pushgateway_url, group, timeout_s=self.settings.pushgateway_timeout_s
            )


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()  # the worker turns SIGTERM into an interrupted export and records it
    try:
        child.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-_ERROR_TAIL_CHARS:].strip()
    return ""
