"""Structured JSON logs: one line per record, the guide's fields on every line, secrets redacted.

Every line carries ``timestamp, level, service, version, instance_id, trace_id, span_id,
message`` (trace and span ids from the active OpenTelemetry span, ``null`` outside one); lines
about a request also carry ``duration_ms, model_type, task, batch_size, memory_mb``. Fields
passed with ``extra={...}`` land in the line. Records go through a queue to a background
thread that writes them, in batches every 50 ms, to stdout and to a size- and time-rotated file,
so a request never waits on disk or pipe I/O. The queue is bounded and a full or read-only disk
costs lines, counted in ``log_records_dropped_total``, never the service (log_writer.py).

Example::

    from mobile_multimodal.observability.logging import get_logger
    log = get_logger(__name__)
    log.info("model loaded", extra={"duration_ms": 812.5, "model_type": "multimodal"})
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opentelemetry import trace

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.config import LoggingConfig
from mobile_multimodal.observability.identity import SERVICE_NAME, instance_id, service_version
from mobile_multimodal.observability.log_writer import DROP_REASONS, BatchWriter, BoundedRecordQueue

BASE_FIELDS = ("timestamp", "level", "service", "version", "instance_id", "trace_id", "span_id", "message")
REQUEST_FIELDS = ("duration_ms", "model_type", "task", "batch_size", "memory_mb")

REDACTED = "[REDACTED]"
# Keys whose values are secrets wherever they appear in ``extra`` (matched on the lower-cased key).
_SECRET_KEY = re.compile(r"(authorization|api[_-]?key|token|secret|password|passwd|cookie|credential)")
# Secrets embedded in free text: bearer tokens, key=value pairs, passwords inside URLs.
_SECRET_TEXT = (
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (
        re.compile(r"(?i)\b(api[_-]?key|token|secret|password|passwd)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(://[^/\s:@]+):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
)
# Matches wherever any of the patterns above could: text without a match is returned untouched.
_MAYBE_SECRET = re.compile(r"(?i)bearer|api[_-]?key|token|secret|passw|://[^/\s:@]+:[^@\s/]+@")
# LogRecord's own attributes: everything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_ROOT_NAME = "mobile_multimodal"
# Internal markers, and uvicorn's ANSI-coloured duplicate of its message.
_DROPPED = frozenset({"otel_captured", "exc_formatted", "color_message"})


def redact_text(text: str) -> str:
    """``text`` with bearer tokens, ``key=value`` secrets and URL passwords replaced."""
    if not _MAYBE_SECRET.search(text):  # one scan for the common case, instead of one per pattern
        return text
    for pattern, repl in _SECRET_TEXT:
        text = pattern.sub(repl, text)
    return text


@functools.lru_cache(maxsize=4096)  # field names are few; every log line asks about each of its own
def _secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key.lower()) is not None


_PLAIN = frozenset({int, float, bool, type(None)})


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secrets removed: by key name, then inside strings."""
    if key and _secret_key(key):
        return REDACTED
    kind = type(value)
    if kind in _PLAIN:  # most fields of most lines: no isinstance() walk through the ABCs
        return value
    if kind is str or isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _span_ids() -> tuple[str | None, str | None]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (see the module docstring for the fields)."""

    def __init__(self) -> None:
        super().__init__()
        self._static = {"service": SERVICE_NAME, "version": service_version(), "instance_id": instance_id()}

    def format(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", None)
        span_id = getattr(record, "span_id", None)
        if trace_id is None and not hasattr(record, "otel_captured"):
            trace_id, span_id = _span_ids()
        ts = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        line: dict[str, Any] = {
            "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            **self._static,
            "trace_id": trace_id,
            "span_id": span_id,
            "message": redact_text(record.getMessage()),
            "logger": record.name,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in line and key not in _DROPPED:
                line[key] = redact(value, key)
        exc = getattr(record, "exc_formatted", None)
        if exc is None and record.exc_info:
            exc = "".join(traceback.format_exception(*record.exc_info))
        if exc:
            line["exception"] = redact_text(exc)
        return json.dumps(line, default=str, ensure_ascii=False)


_LOG_START = time.time()


# What a LogRecord works out that the JSON line never shows (source file, thread and process
# names); formatters read a record's __dict__, so these are copied in, not class attributes.
_REQUEST_RECORD_DEFAULTS = {
    "pathname": __file__,
    "filename": "logging.py",
    "module": "logging",
    "lineno": 0,
    "funcName": "access",
    "args": (),
    "exc_info": None,
    "exc_text": None,
    "stack_info": None,
    "thread": None,
    "threadName": None,
    "processName": None,
    "process": None,
    "taskName": None,
    "otel_captured": True,  # the trace ids are in the fields already: never read at format time
}


class RequestLogRecord(logging.LogRecord):
    """A record for a request's access line, made in a fraction of the time of
    ``Logger.makeRecord`` with the same fields (``Logger.log`` adds a walk up the stack; the
    telemetry path's cost is in benchmarks/telemetry/results.md).

    It carries the line's fields (the caller puts ``trace_id`` and ``span_id`` in them) and a final
    message; the attributes only a LogRecord's constructor works out get fixed defaults.

    Example::

        log.handle(RequestLogRecord(log.name, logging.INFO, "GET /ready 200 0.4ms", {"trace_id": None}))
    """

    def __init__(self, name: str, level: int, message: str, fields: Mapping[str, Any]) -> None:
        created = time.time()
        attrs = self.__dict__
        attrs.update(_REQUEST_RECORD_DEFAULTS)
        attrs.update(fields)
        self.name = name
        self.msg = message
        self.levelno = level
        self.levelname = logging.getLevelName(level)
        self.created = created
        self.msecs = int((created - int(created)) * 1000) + 0.0
        self.relativeCreated = (created - _LOG_START) * 1000


class _ContextQueueHandler(logging.handlers.QueueHandler):
    """Enqueues records after capturing what only the calling thread knows: the active span."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if type(record) is RequestLogRecord:
            return record  # made for this queue, complete and never changed after
        record = copy.copy(record)
        if getattr(record, "trace_id", None) is None:
            record.trace_id, record.span_id = _span_ids()
        record.otel_captured = True
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_formatted = "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
        return record


class SizeAndTimeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Rotates when the file would pass ``max_bytes`` or when ``interval_s`` has passed.

    Backups are numbered like :class:`RotatingFileHandler` (``application.log.1`` is the newest),
    so a size rollover and a time rollover in the same period never collide. With ``--workers N``
    each worker rotates on its own: no line is lost, but a worker may go on writing into a file
    another worker has just rotated until its own next rollover.
    """

    def __init__(
        self,
        filename: Path,
        max_bytes: int,
        backup_count: int,
        interval_s: float,
        clock: Callable[[], float] = time.time,  # tests step their own
    ) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self.interval_s = interval_s
        self._clock = clock
        self.rollover_at = clock() + interval_s

    def shouldRollover(self, record: logging.LogRecord) -> int:
        # The stdlib version formats every record a second time and stats the file twice to
        # decide; the position in our own append-only stream answers it for the cost of a tell()
        # (a file may so end up to one line past max_bytes).
        if self.stream is None:
            self.stream = self._open()
        position = self.stream.tell()
        if 0 < self.maxBytes <= position:
            return 1
        return 1 if position > 0 and self._clock() >= self.rollover_at else 0

    def doRollover(self) -> None:
        super().doRollover()
        self.rollover_at = self._clock() + self.interval_s


class RateLimitFilter(logging.Filter):
    """Lets a message (by its template) through at most once per ``interval_s``; the line that
    gets through says how many were held back since the last one."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock  # tests step their own
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = self._clock()
        with self._lock:
            if now - self._last.get(key, -self.interval_s) < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            record.suppressed = held  # a field of the JSON line
        return True


class LoggingRuntime:
    """What :func:`configure_logging` installed; :meth:`close` writes what is queued and removes it."""

    def __init__(self, writer: BatchWriter, handler: logging.Handler, path: Path | None):
        self.writer, self.handler, self.path = writer, handler, path

    def close(self) -> None:
        root = logging.getLogger()
        if self.handler in root.handlers:
            root.removeHandler(self.handler)
        self.writer.stop()  # drains the queue before returning
        if self.writer.file is not None:
            self.writer.file.close()


_runtime: LoggingRuntime | None = None


def configure_logging(cfg: LoggingConfig, log_dir: Path | None) -> LoggingRuntime:
    """Route every logger (ours, uvicorn's, libraries') to JSON on stdout and a rotating file.

    Replaces a previous configuration made by this function, so tests can reconfigure.
    """
    global _runtime
    if _runtime is not None:
        _runtime.close()
    path = None
    file = None
    if cfg.file.enabled and log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / cfg.file.name
        file = SizeAndTimeRotatingFileHandler(
            path, cfg.file.max_bytes, cfg.file.backup_count, cfg.file.rotate_interval_hours * 3600
        )
    for reason in DROP_REASONS:  # every series at 0 from start, so a rate() sees the first drop
        metrics.LOG_RECORDS_DROPPED.labels(reason)
    # bounded: a writer that cannot keep up costs (counted) lines, never memory
    q = BoundedRecordQueue()
    handler = _ContextQueueHandler(q)
    writer = BatchWriter(q, JsonFormatter().format, sys.stdout if cfg.stdout else None, file)
    writer.start()
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _ContextQueueHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(cfg.level)
    # uvicorn installs its own plain-text handlers; send its records through ours instead. Its
    # access log is replaced by the middleware's request line, which has the guide's fields.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # The SDK's batch span processor (tracing.export_process: false) warns once per span it drops:
    # thousands of lines a second under overload. One line per message a minute says the same.
    sdk_batching = logging.getLogger("opentelemetry.sdk._shared_internal")
    # (by name, not class: a test that reloads this module makes a second RateLimitFilter class)
    for old_filter in [f for f in sdk_batching.filters if type(f).__name__ == "RateLimitFilter"]:
        sdk_batching.removeFilter(old_filter)
    sdk_batching.addFilter(RateLimitFilter(60.0))
    _runtime = LoggingRuntime(writer, handler, path)
    return _runtime


def flush_logging() -> None:
    """Write every queued record now (tests, benchmarks); the writer thread does it every 50 ms."""
    if _runtime is not None:
        _runtime.writer.drain()


def shutdown_logging() -> None:
    """Flush queued records and remove the handlers (at app stop)."""
    global _runtime
    if _runtime is not None:
        _runtime.close()
        _runtime = None


def get_logger(name: str = _ROOT_NAME) -> logging.Logger:
    """A stdlib logger; its records become JSON lines once :func:`configure_logging` ran."""
    return logging.getLogger(name)


_MEMORY_TTL_S = 1.0
_memory_cache = [-1e9, 0.0]  # [monotonic time read, MiB]


def process_memory_mb() -> float:
    """Resident memory of this process in MiB, read at most once a second.

    Every request's log line carries it; reading /proc per request would be a system call on the
    request path, and one that releases the GIL to the log and span exporter threads.
    """
    now = time.monotonic()
    if now - _memory_cache[0] >= _MEMORY_TTL_S:
        try:
            with open("/proc/self/statm", "rb") as f:
                resident_pages = int(f.read().split()[1])
            mib = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            import psutil

            mib = psutil.Process().memory_info().rss / 2**20
        _memory_cache[:] = [now, round(mib, 1)]
    return _memory_cache[1]
