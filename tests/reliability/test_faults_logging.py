"""Issue 16, item 5: the log disk fills or goes away while serving.

The writer survives ``OSError`` from the file (ENOSPC from /dev/full, a log directory replaced
under it), keeps writing stdout, counts what it dropped in ``log_records_dropped_total``, and
resumes the file by itself; its queue stays bounded when nothing drains it; and a served process
whose log file is on a full disk goes on answering.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from tests.integration.servers import scene_png_b64

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.observability import log_writer, metrics
from mobile_multimodal.observability.config import LoggingConfig
from mobile_multimodal.observability.logging import (
    configure_logging,
    flush_logging,
    get_logger,
    shutdown_logging,
)

from .serve_process import ServeProcess, metric_value

log = get_logger("tests.reliability.logging")


def dropped(reason: str) -> float:
    return float(metrics.LOG_RECORDS_DROPPED.labels(reason)._value.get())


def _full_disk_log_dir(tmp_path: Path) -> Path:
    """A log directory whose application.log is /dev/full: every write fails with ENOSPC."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "application.log").symlink_to("/dev/full")
    return log_dir


@pytest.fixture
def logging_cleanup() -> Iterator[None]:
    yield
    shutdown_logging()


def _messages(text: str) -> list[str]:
    return [json.loads(line)["message"] for line in text.splitlines() if line.startswith("{")]


def test_a_full_disk_costs_counted_file_lines_while_stdout_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], logging_cleanup: None
) -> None:
    runtime = configure_logging(LoggingConfig(), _full_disk_log_dir(tmp_path))
    before = dropped("file_write_error")
    for i in range(50):
        log.info("line %d", i)
    flush_logging()
    for i in range(50, 60):  # after the failure: the file waits for its retry, stdout does not
        log.info("line %d", i)
    flush_logging()
    assert runtime.writer.is_alive()
    out = _messages(capsys.readouterr().out)
    assert [f"line {i}" for i in range(60)] == [m for m in out if m.startswith("line ")]
    assert any("failed" in m and "No space left on device" in m for m in out), out[-5:]
    assert dropped("file_write_error") - before >= 60


def test_the_file_resumes_when_the_disk_is_back(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    logging_cleanup: None,
) -> None:
    monkeypatch.setattr(log_writer, "FILE_RETRY_S", 0.0)  # retry at the next batch
    log_dir = _full_disk_log_dir(tmp_path)
    configure_logging(LoggingConfig(), log_dir)
    log.info("while full")
    flush_logging()
    (log_dir / "application.log").unlink()  # space again: the writer reopens a real file
    log.info("after the disk came back")
    flush_logging()
    written = (log_dir / "application.log").read_text()
    assert "after the disk came back" in _messages(written)
    assert "while full" not in written
    assert any("writable again" in m for m in _messages(capsys.readouterr().out))


def test_a_log_directory_replaced_by_a_file_is_survived(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], logging_cleanup: None
) -> None:
    """The directory vanishes under the writer (an unmounted volume): rotation and reopening fail."""
    log_dir = tmp_path / "logs"
    runtime = configure_logging(LoggingConfig(), log_dir)
    log.info("before")
    flush_logging()
    (log_dir / "application.log").unlink()
    log_dir.rmdir()
    log_dir.write_text("not a directory")
    assert runtime.writer.file is not None
    runtime.writer.file.close()  # as after a rotation: the next line must open the file again
    before = dropped("file_write_error")
    log.info("after")
    flush_logging()
    assert runtime.writer.is_alive()
    assert "after" in _messages(capsys.readouterr().out)
    assert dropped("file_write_error") > before


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: the first write to it blocks until someone reads."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_fd, b"x" * 65536)
    os.set_blocking(write_fd, True)
    return read_fd, write_fd


def _read_until_closed(read_fd: int) -> threading.Thread:
    reader = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_fd, 65536), b"")])
    reader.start()
    return reader


def test_the_queue_stays_bounded_when_the_writer_is_stuck(
    monkeypatch: pytest.MonkeyPatch, logging_cleanup: None
) -> None:
    """stdout is a full pipe nobody reads: the writer blocks in its first write() holding one batch
    (at most BATCH_RECORDS), and records pile up in the queue to its bound, the rest dropped."""
    read_fd, write_fd = _full_pipe()
    stuck_stdout: IO[str] = os.fdopen(write_fd, "w")
    monkeypatch.setattr(sys, "stdout", stuck_stdout)
    reader: threading.Thread | None = None
    try:
        runtime = configure_logging(LoggingConfig.model_validate({"file": {"enabled": False}}), None)
        records = runtime.writer.records
        assert isinstance(records, log_writer.BoundedRecordQueue)
        before = dropped("queue_full")
        sent = 3 * records.maxsize
        for i in range(sent):
            log.info("record %d of a flood", i)
        assert records.qsize() <= records.maxsize
        # at most one queue's worth in the queue and one batch in the blocked writer's hands
        assert dropped("queue_full") - before >= sent - records.maxsize - log_writer.BATCH_RECORDS
        # a writer blocked for good does not hang shutdown: stop() gives up after its bound
        assert runtime.writer.stop(timeout_s=0.2) is False
    finally:
        reader = _read_until_closed(read_fd)  # unblock the writer whatever failed above
        shutdown_logging()
        stuck_stdout.close()
        reader.join(60)
        os.close(read_fd)
    assert not reader.is_alive()


@pytest.mark.slow
def test_serving_goes_on_when_the_log_disk_is_full(tiny_model: MobileMultiModalLLM, tmp_path: Path) -> None:
    model_dir = tiny_model.save(tmp_path / "model")
    log_dir = _full_disk_log_dir(tmp_path)
    env = {"MOBILE_MM_MODEL": str(model_dir), "MOBILE_MM_LOG_DIR": str(log_dir)}
    with ServeProcess(tmp_path, env=env) as server:
        for seed in range(5):
            answer = httpx.post(
                server.url + "/inference",
                json={"image": scene_png_b64(seed=seed), "task": "captioning"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
        assert httpx.get(server.url + "/health", timeout=60).status_code == 200
        text = httpx.get(server.url + "/metrics", timeout=60).text
        assert metric_value(text, "log_records_dropped_total", reason="file_write_error") > 0
    # stdout kept every access line (the served process's stdout is its output file)
    access = [m for m in _messages(server.output()) if m.startswith("POST /inference 200")]
    assert len(access) == 5, server.output()[-2000:]
