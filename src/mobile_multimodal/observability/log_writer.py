"""The background thread that writes queued log records, and survives the disk that holds them.

Records wait in a bounded queue (:class:`BoundedRecordQueue`): a record that finds it full is
dropped and counted, so a writer that cannot keep up (a blocked stdout pipe, a stalled disk)
costs log lines, never memory. The writer formats a batch every 50 ms and writes it to stdout
and to the rotating file; an ``OSError`` from either sink (a full disk, ENOSPC; a read-only or
vanished log directory) drops that batch for that sink only, counted in
``log_records_dropped_total{reason}``, and the other sink goes on. A failed file is closed and
reopened ``FILE_RETRY_S`` later, so logging to it resumes by itself when the disk does; stdout
gets one line saying the file failed and one when it is back.

Example::

    records = BoundedRecordQueue(maxsize=10_000)
    writer = BatchWriter(records, JsonFormatter().format, sys.stdout, file_handler)
    writer.start()
    ...
    writer.stop()   # writes what is queued first (waits at most STOP_TIMEOUT_S)
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import queue
import threading
import time
from collections.abc import Callable
from typing import IO

from mobile_multimodal.observability import metrics

# A record is ~1 KiB once formatted; 10,000 of them is the most a stuck writer may hold.
DEFAULT_QUEUE_RECORDS = 10_000
FILE_RETRY_S = 5.0
# The most records one write takes out of the queue: a writer blocked in write() holds at most
# this many besides the queue's bound (a fast producer would otherwise grow the batch it formats).
BATCH_RECORDS = 1000
# How long stop() waits for the last write: a stdout pipe nobody reads must not hang shutdown.
STOP_TIMEOUT_S = 10.0
_ANY_RECORD = logging.makeLogRecord({})

DROP_REASONS = ("queue_full", "file_write_error", "stdout_write_error")


class BoundedRecordQueue(queue.SimpleQueue[logging.LogRecord]):
    """A SimpleQueue (no lock on the request path) that refuses records past ``maxsize``.

    The check is qsize() then put, so concurrent producers may overshoot by one each: bounded
    all the same.
    """

    def __init__(self, maxsize: int = DEFAULT_QUEUE_RECORDS) -> None:
        super().__init__()
        self.maxsize = maxsize

    def put_nowait(self, item: logging.LogRecord) -> None:
        if self.qsize() >= self.maxsize:
            metrics.LOG_RECORDS_DROPPED.labels("queue_full").inc()
            return
        super().put_nowait(item)


class BatchWriter(threading.Thread):
    """Writes queued records as JSON lines every ``interval_s``: one wake-up, one format per record
    and one flush per sink for a whole batch.

    A request thread only enqueues; waking a writer thread per record would make it compete with
    the request and model threads for the GIL on every request.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        format_record: Callable[[logging.LogRecord], str],
        stdout: IO[str] | None,
        file: logging.handlers.RotatingFileHandler | None,
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="json-log-writer", daemon=True)
        self.records, self.stdout, self.file, self.interval_s = records, stdout, file, interval_s
        self.format_record = format_record
        self._clock = clock
        self._stop_event = threading.Event()
        self._drain_lock = threading.Lock()  # flush_logging() drains from another thread
        self.file_failed_at: float | None = None  # when the file last failed; None = healthy

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.drain()
        self.drain()

    def drain(self) -> None:
        with self._drain_lock:
            self._drain()

    def _format_batch(self) -> list[str]:
        lines: list[str] = []
        while len(lines) < BATCH_RECORDS:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                return lines
            try:
                lines.append(self.format_record(record))
            except Exception:  # one unformattable record must not stop the log
                note = {"msg": f"unformattable log record from {record.name}", "levelname": "ERROR"}
                lines.append(self.format_record(logging.makeLogRecord(note)))
        return lines

    def _drain(self) -> None:
        while len(lines := self._format_batch()) == BATCH_RECORDS:
            self._write(lines)
        if lines:
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if self.file is not None:
            self._write_file(lines)  # first: a failure or recovery note then reaches stdout with them
        if self.stdout is not None:
            try:
                self.stdout.write("\n".join(lines) + "\n")
                self.stdout.flush()
            # a closed or broken pipe, a full disk behind a redirect: nothing may end this thread
            except Exception:
                metrics.LOG_RECORDS_DROPPED.labels("stdout_write_error").inc(len(lines))

    def _write_file(self, lines: list[str]) -> None:
        assert self.file is not None
        now = self._clock()
        if self.file_failed_at is not None and now - self.file_failed_at < FILE_RETRY_S:
            metrics.LOG_RECORDS_DROPPED.labels("file_write_error").inc(len(lines))
            return
        try:
            with self.file.lock or contextlib.nullcontext():
                for line in lines:
                    if self.file.shouldRollover(_ANY_RECORD):  # (it opens the file, and decides)
                        self.file.doRollover()
                    if self.file.stream is not None:
                        self.file.stream.write(line + "\n")
                self.file.flush()
        except Exception as exc:  # OSError mostly (ENOSPC, EROFS, a vanished directory)
            metrics.LOG_RECORDS_DROPPED.labels("file_write_error").inc(len(lines))
            self._close_file()  # its buffer holds what failed; reopened at the next retry
            if self.file_failed_at is None:
                lines.append(self._note("ERROR", f"log file {self.file.baseFilename} failed: {exc}"))
            self.file_failed_at = now
            return
        if self.file_failed_at is not None:
            self.file_failed_at = None
            lines.append(self._note("INFO", f"log file {self.file.baseFilename} writable again"))

    def _close_file(self) -> None:
        assert self.file is not None
        stream, self.file.stream = self.file.stream, None
        if stream is not None:
            # (its flush fails again, but io closes the descriptor whatever the flush did)
            with contextlib.suppress(OSError, ValueError):
                stream.close()

    def _note(self, level: str, message: str) -> str:
        record = logging.makeLogRecord({"msg": message, "levelname": level, "name": __name__})
        record.operation = "logging"
        try:
            return self.format_record(record)
        except Exception:
            return json.dumps({"level": level, "message": message})

    def stop(self, timeout_s: float | None = None) -> bool:
        """Write what is queued and end; False when a sink stayed blocked past ``timeout_s``
        (default ``STOP_TIMEOUT_S``): the thread is a daemon, so the process still exits."""
        self._stop_event.set()
        self.join(STOP_TIMEOUT_S if timeout_s is None else timeout_s)
        return not self.is_alive()
