from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mobile_multimodal.observability.config import LogFileConfig, LoggingConfig, TracingConfig
from mobile_multimodal.observability.identity import SERVICE_NAME, service_version
from mobile_multimodal.observability.logging import (
    BASE_FIELDS,
    REDACTED,
    JsonFormatter,
    RateLimitFilter,
    RequestLogRecord,
    SizeAndTimeRotatingFileHandler,
    configure_logging,
    flush_logging,
    get_logger,
    redact,
    redact_text,
    shutdown_logging,
)
from mobile_multimodal.observability.tracing import configure_tracing, stage

from .conftest import SteppedClock


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mobile_multimodal.test", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_every_line_has_the_guides_fields() -> None:
    line = json.loads(JsonFormatter().format(_record("model %s loaded", "default", duration_ms=12.5)))
    for field in BASE_FIELDS:
        assert field in line, field
    assert line["service"] == SERVICE_NAME
    assert line["version"] == service_version()
    assert line["level"] == "INFO"
    assert line["message"] == "model default loaded"
    assert line["duration_ms"] == 12.5
    assert line["timestamp"].endswith("Z")
    assert line["trace_id"] is None and line["span_id"] is None  # no active span


def test_trace_ids_come_from_the_active_span() -> None:
    configure_tracing(TracingConfig(), SERVICE_NAME, InMemorySpanExporter())
    with stage("model_inference") as span:
        line = json.loads(JsonFormatter().format(_record("inside")))
        ctx = span.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer mmk_live_abcdef123456", "mmk_live_abcdef123456"),
        ("retrying with api_key=sk-9f8e7d6c5b4a", "sk-9f8e7d6c5b4a"),
        ('{"token": "t0ps3cr3t"}', "t0ps3cr3t"),
        ("connecting to postgresql://mm:hunter2@db:5432/mm", "hunter2"),
        ("password: letmein", "letmein"),
    ],
)
def test_secrets_in_text_are_redacted(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert REDACTED in out


def test_secret_fields_are_redacted_and_others_kept() -> None:
    out = redact(
        {"api_key": "abc", "headers": {"Authorization": "Bearer x", "accept": "json"}, "user_id": "alice"}
    )
    assert out == {
        "api_key": REDACTED,
        "headers": {"Authorization": REDACTED, "accept": "json"},
        "user_id": "alice",
    }
    line = json.loads(JsonFormatter().format(_record("key %s", "Bearer zzz999", metrics_token="zzz999")))
    assert "zzz999" not in json.dumps(line)


def test_exceptions_are_one_field_of_one_line() -> None:
    try:
        raise ValueError("bad pixel")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), None)
        import sys

        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: bad pixel" in json.loads(text)["exception"]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_configured_logging_writes_json_to_stdout_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = configure_logging(LoggingConfig(level="INFO"), tmp_path)
    log = get_logger("mobile_multimodal.test")
    log.debug("not at INFO")
    log.info("hello", extra={"task": "ocr", "batch_size": 4})
    logging.getLogger("uvicorn.error").warning("a library line")
    shutdown_logging()  # drains the queue
    assert runtime.path == tmp_path / "application.log"
    lines = _lines(tmp_path / "application.log")
    assert [line["message"] for line in lines] == ["hello", "a library line"]
    assert lines[0]["task"] == "ocr" and lines[0]["batch_size"] == 4
    stdout = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [line["message"] for line in stdout] == ["hello", "a library line"]


def test_queued_records_keep_the_trace_of_the_thread_that_logged(tmp_path: Path) -> None:
    configure_tracing(TracingConfig(), SERVICE_NAME, InMemorySpanExporter())
    configure_logging(LoggingConfig(stdout=False), tmp_path)
    with stage("inference") as span:
        get_logger("mobile_multimodal.test").info("in span")
        trace_id = format(span.get_span_context().trace_id, "032x")
    get_logger("mobile_multimodal.test").info("after span")
    shutdown_logging()
    first, second = _lines(tmp_path / "application.log")
    assert first["trace_id"] == trace_id
    assert second["trace_id"] is None


def test_rotation_by_size(tmp_path: Path) -> None:
    handler = SizeAndTimeRotatingFileHandler(
        tmp_path / "app.log", max_bytes=2000, backup_count=3, interval_s=3600
    )
    handler.setFormatter(JsonFormatter())
    for i in range(40):
        handler.emit(_record(f"line {i:03d} " + "x" * 50))
    handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["app.log", "app.log.1", "app.log.2", "app.log.3"]  # backup_count bounds the disk used
    longest = max(len(line) + 1 for f in files for line in (tmp_path / f).read_text().splitlines())
    assert all((tmp_path / f).stat().st_size <= 2000 + longest for f in files)  # at most one line over
    assert str(_lines(tmp_path / "app.log")[-1]["message"]).startswith("line 039")


def test_rotation_by_time(tmp_path: Path) -> None:
    clock = SteppedClock(1_700_000_000.0)
    handler = SizeAndTimeRotatingFileHandler(
        tmp_path / "app.log", max_bytes=10**9, backup_count=5, interval_s=3600, clock=clock
    )
    handler.setFormatter(JsonFormatter())
    handler.emit(_record("before"))
    clock.now += 3599
    handler.emit(_record("not yet"))
    clock.now += 1
    handler.emit(_record("after"))
    handler.close()
    assert [line["message"] for line in _lines(tmp_path / "app.log.1")] == ["before", "not yet"]
    assert [line["message"] for line in _lines(tmp_path / "app.log")] == ["after"]


def test_file_logging_can_be_turned_off(tmp_path: Path) -> None:
    runtime = configure_logging(LoggingConfig(stdout=False, file=LogFileConfig(enabled=False)), tmp_path)
    assert runtime.path is None
    assert not list(tmp_path.iterdir())


def test_a_request_record_formats_like_any_log_record() -> None:
    """Access lines skip LogRecord's constructor; every handler must still be able to format them."""
    fields = {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331", "status": 200}
    record = RequestLogRecord("mobile_multimodal.access", logging.WARNING, "GET /x 200 1.0ms", fields)
    plain = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d %(funcName)s %(threadName)s "
        "%(process)s %(processName)s %(module)s %(pathname)s %(relativeCreated)d %(message)s"
    )
    assert plain.format(record).endswith("GET /x 200 1.0ms")
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["message"] == "GET /x 200 1.0ms" and line["status"] == 200
    assert line["trace_id"] == fields["trace_id"] and line["span_id"] == fields["span_id"]
    stamped = dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert abs(stamped.timestamp() - time.time()) < 60
    reference = logging.makeLogRecord({})
    assert set(reference.__dict__) <= set(record.__dict__)  # nothing a formatter may read is missing


def test_flush_logging_writes_what_is_queued(tmp_path: Path) -> None:
    cfg = LoggingConfig(stdout=False, file=LogFileConfig(enabled=True))
    runtime = configure_logging(cfg, tmp_path)
    runtime.writer.stop()  # no writer thread from here on: only flush_logging() can write the line
    get_logger("mobile_multimodal.test").warning("now, please")
    assert runtime.path is not None
    assert "now, please" not in runtime.path.read_text()
    flush_logging()
    assert "now, please" in runtime.path.read_text()


def test_the_sdk_span_drop_warning_is_rate_limited(tmp_path: Path) -> None:
    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    log = logging.Logger("drops")
    keep = Keep()
    log.addHandler(keep)
    clock = SteppedClock()
    log.addFilter(RateLimitFilter(60, clock=clock))
    for _ in range(1000):  # what the SDK's batch processor says per dropped span
        log.warning("Queue full, dropping %s.", "Span")
    log.warning("another message")
    clock.now += 59
    log.warning("Queue full, dropping %s.", "Span")  # still held back
    clock.now += 1
    log.warning("Queue full, dropping %s.", "Span")
    assert [r.getMessage() for r in keep.records] == [
        "Queue full, dropping Span.",
        "another message",
        "Queue full, dropping Span.",
    ]
    assert not hasattr(keep.records[0], "suppressed") and keep.records[2].suppressed == 1000
    # the app puts one on the SDK's logger, and reconfiguring does not add a second
    sdk = logging.getLogger("opentelemetry.sdk._shared_internal")
    for _ in range(2):
        configure_logging(LoggingConfig(stdout=False), tmp_path)
        assert len([f for f in sdk.filters if type(f).__name__ == "RateLimitFilter"]) == 1
