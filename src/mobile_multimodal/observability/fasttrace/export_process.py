"""Span export in a child process, so OTLP encoding never runs under the serving process's GIL.

The SDK's ``BatchSpanProcessor`` thread encodes each request's eight spans to protobuf in
Python, holding the GIL that the model thread needs between its operators. Measured on the
bundled model, that was the largest part of telemetry's cost (``benchmarks/telemetry/``; the
figures are in ``benchmarks/telemetry/results.md``), and a background thread does not hide it:
on a sequential request stream every CPU-microsecond under the GIL lands on some request.

:class:`SpanExportProcess` is a span processor that only queues finished spans. A feeder thread
hands them, as plain tuples pickled in batches, through a pipe to
``python -m mobile_multimodal.observability.fasttrace.export_process``. That child turns them back into
``ReadableSpan``\\ s and exports them with the SDK's own OTLP exporter (HTTP or gRPC), so the
bytes on the wire, retries, and the ``OTEL_EXPORTER_OTLP_*`` variables are the SDK's; it batches
as the SDK's ``BatchSpanProcessor`` does, after ``OTEL_BSP_SCHEDULE_DELAY`` (ms, default 5000) or
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans (512). It runs on its own interpreter, so the encoding
uses the other core instead of the serving process's GIL.

Spans that are never exported are counted in ``trace_spans_dropped_total{reason}`` and logged at
most once a minute: ``queue_full`` (more than ``OTEL_BSP_MAX_QUEUE_SIZE``, default 2048, waiting
in this process or in the child), ``exporter_down`` (the child is gone) and ``export_failed``
(the collector refused them or could not be reached; the child reports these back). The request
path never waits on the child. A child that died is started again (at most every 10 s).
``force_flush`` waits until the child has exported; ``shutdown`` exports what is left and waits
for the child to exit. The child exits on its own when the serving process goes away.

Example::

    processor = SpanExportProcess(TracingConfig(endpoint="http://127.0.0.1:4318/v1/traces"), resource)
    provider.add_span_processor(processor)
    ...
    processor.shutdown()
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.config import LoggingConfig, TracingConfig
from mobile_multimodal.observability.fasttrace.spans import FastSpan
from mobile_multimodal.observability.identity import instance_id, set_instance_id

_log = logging.getLogger("mobile_multimodal.tracing")

_HEADER = struct.Struct("!I")  # frame length
# child -> parent: (kind, value); kinds below
_REPORT = struct.Struct("!BQ")
_FLUSHED, _DROPPED_QUEUE_FULL, _DROPPED_EXPORT_FAILED = 1, 2, 3
_DROP_REASONS = {_DROPPED_QUEUE_FULL: "queue_full", _DROPPED_EXPORT_FAILED: "export_failed"}
# the SDK's defaults for the OTEL_BSP_* variables
DEFAULT_MAX_QUEUE_SIZE = 2048
DEFAULT_SCHEDULE_DELAY_MS = 5000
DEFAULT_MAX_EXPORT_BATCH_SIZE = 512
_DROP_LOG_INTERVAL_S = 60.0

# One span as the pipe carries it: plain values only, so pickling stays in C.
SpanRecord = tuple[Any, ...]
_INTERNAL = SpanKind.INTERNAL.value


def _context_record(ctx: SpanContext) -> tuple[int, int, bool, int, tuple[tuple[str, str], ...]]:
    return (ctx.trace_id, ctx.span_id, ctx.is_remote, int(ctx.trace_flags), tuple(ctx.trace_state.items()))


def _scope_record(scope: InstrumentationScope | None) -> tuple[Any, ...] | None:
    if scope is None:
        return None
    attributes = tuple(scope.attributes.items()) if scope.attributes else None
    return (scope.name, scope.version, scope.schema_url, attributes)


def to_records(span: FastSpan | ReadableSpan) -> list[SpanRecord]:
    """The picklable form of a finished span (a :class:`FastSpan` with its leaf stages, or any
    SDK ``ReadableSpan``), one record per span."""
    if not isinstance(span, FastSpan):
        return [to_record(span)]
    record = to_record(span)
    leaves = span._leaves
    if not leaves:
        return [record]
    records = [record]
    parent, scope = record[1], record[11]
    trace_id, _, _, flags, state = parent
    for leaf in leaves:
        events = leaf._events
        status = leaf._status
        records.append(
            (
                leaf._name,
                (trace_id, leaf._span_id, False, flags, state),
                parent,
                _INTERNAL,
                leaf._start,
                leaf._end,
                leaf._attributes,
                [(e.name, dict(e.attributes or {}), e.timestamp) for e in events] if events else None,
                None,
                status.status_code.value,
                status.description,
                scope,
            )
        )
    return records


def to_record(span: FastSpan | ReadableSpan) -> SpanRecord:
    """The picklable form of one finished span (a :class:`FastSpan` without its leaf stages, or
    any SDK ``ReadableSpan``)."""
    if isinstance(span, FastSpan):
        # the request path's spans: read the slots directly (this runs ~3 times per request)
        events = span._events
        links = span._links
        status = span._status
        parent = span._parent
        return (
            span._name,
            _context_record(span._context),
            None if parent is None else _context_record(parent),
            span._kind.value,
            span._start,
            span._end,
            span._attributes,
            [(e.name, dict(e.attributes or {}), e.timestamp) for e in events] if events else None,
            [(_context_record(k.context), dict(k.attributes or {})) for k in links] if links else None,
            status.status_code.value,
            status.description,
            _scope_record(span._recorder.scope),
        )
    ctx = span.get_span_context()
    if ctx is None:
        raise ValueError(f"span {span.name!r} has no context")
    return (
        span.name,
        _context_record(ctx),
        None if span.parent is None else _context_record(span.parent),
        span.kind.value,
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events] or None,
        [(_context_record(k.context), dict(k.attributes or {})) for k in span.links] or None,
        span.status.status_code.value,
        span.status.description,
        _scope_record(span.instrumentation_scope),
    )


def _context(rec: tuple[int, int, bool, int, tuple[tuple[str, str], ...]]) -> SpanContext:
    trace_id, span_id, is_remote, flags, state = rec
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(list(state)))


def from_record(
    rec: SpanRecord, resource: Resource, scopes: dict[Any, InstrumentationScope] | None = None
) -> ReadableSpan:
    """The ``ReadableSpan`` a :func:`to_record` tuple stands for, under ``resource``."""
    name, ctx, parent, kind, start, end, attributes, events, links, code, description, scope = rec
    instrumentation_scope = None
    if scope is not None:
        try:
            instrumentation_scope = scopes.get(scope) if scopes is not None else None
        except TypeError:  # an attribute value that cannot be a dict key: build it every time
            scopes = None
        if instrumentation_scope is None:
            scope_name, version, schema_url, scope_attributes = scope
            instrumentation_scope = InstrumentationScope(
                scope_name, version, schema_url, dict(scope_attributes) if scope_attributes else None
            )
            if scopes is not None:
                scopes[scope] = instrumentation_scope
    return ReadableSpan(
        name=name,
        context=_context(ctx),
        parent=None if parent is None else _context(parent),
        resource=resource,
        attributes=attributes,
        events=tuple(Event(n, a, t) for n, a, t in events or ()),
        links=tuple(Link(_context(c), a) for c, a in links or ()),
        kind=SpanKind(kind),
        status=Status(StatusCode(code), description),
        start_time=start,
        end_time=end,
        instrumentation_scope=instrumentation_scope,
    )


def _encode(message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _write_frame(stream: IO[bytes], message: Any) -> None:
    payload = message if isinstance(message, bytes) else _encode(message)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the pipe."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)  # the frames come from our own parent process


def _span_count(span: FastSpan | ReadableSpan) -> int:
    """How many spans ``span`` stands for: itself and, for a FastSpan, its leaf stages."""
    leaves = span._leaves if isinstance(span, FastSpan) else None
    return 1 + len(leaves) if leaves else 1


def _encode_spans(spans: list[FastSpan | ReadableSpan]) -> tuple[bytes | None, int, int]:
    """The ``("spans", records)`` frame for ``spans``, how many spans it carries, and how many
    could not be encoded (an attribute value that is not a plain value slipped in): those are
    left out, not the batch."""
    records, bad = [], 0
    for span in spans:
        try:
            records.extend(to_records(span))
        except Exception:
            bad += _span_count(span)
    try:
        return _encode(("spans", records)), len(records), bad
    except Exception:
        _log.exception("a span could not be encoded for export; leaving it out")
    kept = []
    for rec in records:
        try:
            _encode(rec)
            kept.append(rec)
        except Exception:
            bad += 1
    return (_encode(("spans", kept)) if kept else None), len(kept), bad


def _env_int(name: str, default: int) -> int:
    """A positive integer from the environment; the default (with a warning) when it is not one."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
        if value > 0:
            return value
    except ValueError:
        pass
    _log.warning("%s=%r is not a positive integer; using %d", name, raw, default)
    return default


class SpanExportProcess(SpanProcessor):
    """Queues finished spans and exports them over OTLP from a child process (module docstring)."""

    takes_fast_spans = True  # SpanRecorder hands FastSpans to submit() as they are (no ReadableSpan copy)

    def __init__(
        self,
        cfg: TracingConfig,
        resource: Resource,
        *,
        max_queue_size: int | None = None,
        handoff_interval_s: float = 0.05,
        handoff_batch: int = 256,
        shutdown_timeout_s: float = 30.0,
        respawn_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cfg.endpoint:
            raise ValueError("SpanExportProcess needs an OTLP endpoint (tracing.endpoint)")
        self.cfg = cfg
        self.resource = resource
        self.max_queue_size = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE)
        self.handoff_interval_s = handoff_interval_s
        self.handoff_batch = handoff_batch
        self.shutdown_timeout_s = shutdown_timeout_s
        self.respawn_interval_s = respawn_interval_s
        self._clock = clock  # decides when a dead child is due to be started again (tests step it)
        self.dropped: collections.Counter[str] = collections.Counter()
        self.queue: collections.deque[FastSpan | ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one frame at a time on the pipe
        self._report_lock = threading.Lock()  # one reader of the child's reports at a time
        self._report_buf = b""
        self._flushed = 0  # the last flush token the child confirmed
        self._flush_token = 0
        self._closing = False
        self._shut_down = False
        self._last_drop_log = -_DROP_LOG_INTERVAL_S
        self._last_spawn = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._data: IO[bytes] | None = None
        self._reports: int | None = None
        self._spawn()
        self._feeder = threading.Thread(target=self._run, name="span-export-feeder", daemon=True)
        self._feeder.start()

    # ---- the child -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The export process's pid (None before the first start)."""
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        self._last_spawn = self._clock()
        data_r, data_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(data_r), str(report_w)],
                pass_fds=(data_r, report_w),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal must not kill it before we flush
            )
        except OSError:
            os.close(data_w)
            os.close(report_r)
            raise
        finally:  # the child's ends
            os.close(data_r)
            os.close(report_w)
        self._data = open(data_w, "wb")  # noqa: SIM115 - closed in _close_pipes
        self._reports = report_r
        self._report_buf = b""
        start = {
            "resource": dict(self.resource.attributes),
            "schema_url": self.resource.schema_url,
            "endpoint": self.cfg.endpoint,
            "protocol": self.cfg.protocol,
            "instance_id": instance_id(),
        }
        self._send(("start", start))

    def _close_data(self) -> None:
        """Close our end of the data pipe (the child sees its end). Call with ``_write_lock`` held."""
        if self._data is not None:
            with contextlib.suppress(OSError):
                self._data.close()
            self._data = None

    def _close_pipes(self) -> None:
        with self._write_lock:
            self._close_data()
        with self._report_lock:
            if self._reports is not None:
                with contextlib.suppress(OSError):
                    os.close(self._reports)
                self._reports = None

    def _alive(self) -> bool:
        return self._data is not None and self._proc is not None and self._proc.poll() is None

    def _send(self, message: Any) -> bool:
        """Write one frame; False (and the pipe closed) when the child is gone."""
        with self._write_lock:
            if self._data is None:
                return False
            try:
                _write_frame(self._data, message)
                return True
            except (OSError, ValueError):
                code = self._proc.poll() if self._proc is not None else None
                _log.error("the span export process is gone (exit code %s); spans are dropped", code)
                self._close_data()
                return False

    def _read_reports(self, timeout_s: float) -> None:
        """Apply what the child reported (flush confirmations, drops), waiting up to ``timeout_s``
        for the first report. Call with ``_report_lock`` held."""
        fd = self._reports
        if fd is None:
            return
        ready, _, _ = select.select([fd], [], [], max(timeout_s, 0.0))
        if not ready:
            return
        data = os.read(fd, 4096)
        if not data:  # the child exited
            os.close(fd)
            self._reports = None
            return
        buf = self._report_buf + data
        whole = len(buf) - len(buf) % _REPORT.size
        for kind, value in _REPORT.iter_unpack(buf[:whole]):
            if kind == _FLUSHED:
                self._flushed = max(self._flushed, value)
            elif kind in _DROP_REASONS:
                self._drop(value, _DROP_REASONS[kind])
        self._report_buf = buf[whole:]

    # ---- SpanProcessor ---------------------------------------------------------------------
    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        return None

    def on_end(self, span: FastSpan | ReadableSpan) -> None:
        ctx = span.get_span_context()
        if ctx is not None and ctx.trace_flags.sampled:
            self.submit(span)

    def submit(self, span: FastSpan | ReadableSpan) -> None:
        """Queue a span known to be sampled: ``on_end`` without its check, which SpanRecorder
        (the request path, ~8 calls per request) has made already."""
        queue = self.queue
        if len(queue) >= self.max_queue_size or self._shut_down:
            if not self._shut_down:
                self._drop(_span_count(span), "queue_full")
            return
        queue.append(span)
        if len(queue) == self.handoff_batch:  # once: Event.set() takes a lock every call
            self._wake.set()

    def _drop(self, n: int, reason: str) -> None:
        self.dropped[reason] += n
        metrics.TRACE_SPANS_DROPPED.labels(reason).inc(n)
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            _log.warning(
                "%d spans were not exported (%s); %d so far (trace_spans_dropped_total)",
                n,
                reason,
                sum(self.dropped.values()),
                extra={"reason": reason},
            )

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self.handoff_interval_s)
            self._wake.clear()
            try:
                self._hand_off()
                if self._report_lock.acquire(blocking=False):  # a flush may be reading them
                    try:
                        self._read_reports(0)
                    finally:
                        self._report_lock.release()
            except Exception:  # a bug here must not stop the hand-off for good
                _log.exception("span hand-off failed")

    def _hand_off(self) -> None:
        """Send every queued span to the child (starting it again when it died)."""
        queue = self.queue
        if not queue:
            return
        spans = []
        with contextlib.suppress(IndexError):  # another thread may drain the queue at the same time
            for _ in range(len(queue)):
                spans.append(queue.popleft())
        respawn_due = self._clock() - self._last_spawn >= self.respawn_interval_s
        if not self._alive() and not self._closing and respawn_due:
            self._close_pipes()
            try:
                self._spawn()
                _log.warning("the span export process was started again")
            except OSError as exc:
                _log.error("could not start the span export process: %s", exc)
        payload, carried, bad = _encode_spans(spans)
        if bad:
            self._drop(bad, "export_failed")
        if payload is not None and not self._send(payload):
            self._drop(carried, "exporter_down")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Hand everything over and wait until the child has exported it; False on timeout."""
        if self._shut_down:
            return False
        deadline = time.monotonic() + timeout_millis / 1000
        self._hand_off()
        with self._report_lock:
            self._flush_token += 1
            token = self._flush_token
            if not self._send(("flush", token)):
                return False
            while self._flushed < token:
                left = deadline - time.monotonic()
                if self._reports is None or left <= 0:
                    return False
                self._read_reports(left)
            return True

    def shutdown(self) -> None:
        """Export what is queued, stop the child and wait for it (``shutdown_timeout_s`` at most)."""
        if self._shut_down:
            return
        self._closing = True
        self._wake.set()
        self._feeder.join()
        self._hand_off()
        self._shut_down = True
        self._send(("shutdown",))
        with self._write_lock:  # end of the pipe: the child exports what it has and exits
            self._close_data()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=self.shutdown_timeout_s)
            except subprocess.TimeoutExpired:
                _log.error("the span export process did not finish exporting in time; stopped it")
                self._proc.kill()
                self._proc.wait()
        with self._report_lock:  # count what the child could not export
            while self._reports is not None:
                self._read_reports(0.5)
        self._close_pipes()


class _ChildExporter:
    """The child's side: a bounded queue of span records and a thread that exports them in batches
    (what the SDK's BatchSpanProcessor does, plus drop reports to the parent)."""

    def __init__(self, exporter: SpanExporter, resource: Resource, reports: IO[bytes]) -> None:
        self.exporter = exporter
        self.resource = resource
        self.reports = reports
        self.max_queue_size = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE)
        self.batch_size = _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_MAX_EXPORT_BATCH_SIZE)
        self.delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS) / 1000
        self.records: collections.deque[SpanRecord] = collections.deque()
        self.scopes: dict[Any, InstrumentationScope] = {}
        self._export_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="span-exporter", daemon=True)
        self._thread.start()

    def report(self, kind: int, value: int) -> None:
        with self._report_lock:
            self.reports.write(_REPORT.pack(kind, value))

    def add(self, records: list[SpanRecord]) -> None:
        room = self.max_queue_size - len(self.records)
        if len(records) > room:
            self.report(_DROPPED_QUEUE_FULL, len(records) - max(room, 0))
            records = records[: max(room, 0)]
        self.records.extend(records)
        if len(self.records) >= self.batch_size:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self.export_all()

    def export_all(self) -> None:
        with self._export_lock:
            while self.records:
                n = min(self.batch_size, len(self.records))
                records = [self.records.popleft() for _ in range(n)]
                try:
                    batch = [from_record(r, self.resource, self.scopes) for r in records]
                    result = self.exporter.export(batch)
                except Exception:  # a bug here must cost this batch, not the export process
                    _log.exception("could not export a batch of %d spans", n)
                    result = SpanExportResult.FAILURE
                if result is not SpanExportResult.SUCCESS:
                    self.report(_DROPPED_EXPORT_FAILED, n)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self.export_all()
        self.exporter.shutdown()


def _lower_priority() -> None:
    """Let the serving process's threads have a CPU first: a batch of spans can wait a few ms, a
    request should not. ``nice 10``, not SCHED_IDLE: under sustained full load the exporter still
    gets a share, instead of starving until its queue overflows."""
    with contextlib.suppress(AttributeError, OSError):  # not on this platform, or not allowed
        os.nice(10)


def _child(data_fd: int, report_fd: int) -> int:
    """The export process: read frames, export spans in batches, confirm flushes, report drops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (so does `docker stop`, through the parent)
    _lower_priority()
    from mobile_multimodal.observability.logging import configure_logging, shutdown_logging
    from mobile_multimodal.observability.otlp_exporter import build_exporter

    with open(data_fd, "rb") as data, open(report_fd, "wb", buffering=0) as reports:
        start = _read_frame(data)
        if start is None or start[0] != "start":
            return 1
        settings = start[1]
        set_instance_id(settings["instance_id"])  # our log lines name the serving process
        # exporter errors go to stdout as JSON lines; the rotating file belongs to the parent
        quiet = LoggingConfig.model_validate({"level": "WARNING", "file": {"enabled": False}})
        configure_logging(quiet, None)
        try:
            target = TracingConfig(endpoint=settings["endpoint"], protocol=settings["protocol"])
            exporter = build_exporter(target)
            if exporter is None:
                return 1
            child = _ChildExporter(exporter, Resource(settings["resource"], settings["schema_url"]), reports)
            while True:
                message = _read_frame(data)
                if message is None or message[0] == "shutdown":
                    break
                if message[0] == "spans":
                    child.add(message[1])
                elif message[0] == "flush":
                    child.export_all()
                    child.report(_FLUSHED, message[1])
            child.stop()
        finally:
            shutdown_logging()
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), int(sys.argv[2])))
