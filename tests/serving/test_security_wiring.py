"""The app wired to security/ and store/: integrity loop, config record, backup metrics, anomalies.

Each test starts the real app (uvicorn on 127.0.0.1) and asserts on what an operator sees:
``/metrics``, ``/health``, and the rows of the audit trail. The metrics registry is the test
process's, shared by every server it starts, so the tests compare before/after values.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.integration.servers import wait_for

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.serving.engine import default_loader
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import AuditEvent, BackupRun, Database

from .conftest import LiveServer, metric_value, served_caption
from .test_server_process import _instances, _serve, stop_group

FAILURES = "model_integrity_failures_total"
CHECKED = "model_integrity_last_check_timestamp_seconds"
TAMPERING = {"event_type": "model_tampering"}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A real model directory (tiny config): model.safetensors + manifest.json with sha256s."""
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")


def _flip_last_byte(model_dir: Path) -> None:
    """Same size, another sha256, in one write of one byte: rewriting the whole file (truncate,
    then write) let a check that ran in between see a short file, a second incident."""
    with open(model_dir / "model.safetensors", "r+b") as weights:
        weights.seek(-1, os.SEEK_END)
        last = weights.read(1)[0]
        weights.seek(-1, os.SEEK_END)
        weights.write(bytes([last ^ 0xFF]))


def _metrics(client: httpx.Client) -> str:
    return client.get("/metrics").text


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.05)


def _more_checks(client: httpx.Client, n: int = 3) -> None:
    """Wait until the integrity loop has checked at least ``n`` more times (its timestamp moved)."""
    stamps = {metric_value(_metrics(client), CHECKED)}

    def moved() -> bool:
        stamps.add(metric_value(_metrics(client), CHECKED))
        return len(stamps) > n

    _wait_for(f"{n} more integrity checks", moved)


def _audit(database: Database, action: str) -> list[AuditEvent]:
    with database.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_runtime_tampering_is_counted_once_and_turns_health_unhealthy(
    live_server: Callable[..., LiveServer], model_dir: Path
) -> None:
    started = time.time()
    server = live_server(loader=default_loader, model=str(model_dir), integrity_check_interval_s=0.2)
    database: Database = server.app.state.database
    with server.client() as client:
        _wait_for(
            "a first passing integrity check",
            lambda: (
                metric_value(text := _metrics(client), "model_integrity_last_check_timestamp_seconds")
                >= started
                and metric_value(text, "model_integrity_ok") == 1
            ),
        )
        before = _metrics(client)
        caption = served_caption(client)
        assert client.get("/health").json()["checks"]["model"] == "healthy"

        _flip_last_byte(model_dir)
        _wait_for("model_integrity_ok 0", lambda: metric_value(_metrics(client), "model_integrity_ok") == 0)
        _more_checks(client)  # more checks find the same modification: still one incident
        after = _metrics(client)
        assert metric_value(after, FAILURES, model_type="multimodal") == (
            metric_value(before, FAILURES, model_type="multimodal") + 1
        )
        assert metric_value(after, "security_events_total", **TAMPERING) == (
            metric_value(before, "security_events_total", **TAMPERING) + 1
        )

        health = client.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unhealthy" and body["checks"]["model"] == "unhealthy"
        (error,) = [e for e in body["errors"] if e["component"] == "model"]
        assert error["code"] == "MODEL_INTEGRITY_FAILED" and "model.safetensors" in error["message"]
        # The decision (serving/background.py): keep serving the weights verified at load.
        assert client.get("/ready").status_code == 200
        assert served_caption(client) == caption

        (row,) = _audit(database, "model.integrity_check")
        assert (row.user_id, row.result) == ("system", "failure")
        assert [m["path"] for m in row.details["mismatches"]] == ["model.safetensors"]

        _flip_last_byte(model_dir)  # restored from a trusted copy
        _wait_for("model_integrity_ok 1", lambda: metric_value(_metrics(client), "model_integrity_ok") == 1)
        assert client.get("/health").json()["checks"]["model"] == "healthy"
        restored = _metrics(client)
        assert metric_value(restored, FAILURES, model_type="multimodal") == metric_value(
            after, FAILURES, model_type="multimodal"
        )
        rows = _audit(database, "model.integrity_check")
        assert [(r.result, r.details.get("recovered")) for r in rows] == [
            ("failure", None),
            ("success", True),
        ]


def test_a_changed_configuration_is_counted_once(live_server: Callable[..., LiveServer]) -> None:
    def changes(server: LiveServer) -> tuple[float, float]:
        with server.client() as client:
            text = _metrics(client)
        return (
            metric_value(text, "config_changes_total", source="startup"),
            metric_value(text, "security_events_total", event_type="config_change"),
        )

    first = live_server(ready=False)
    baseline = changes(first)
    first.stop()
    second = live_server(ready=False, max_batch_size=4)  # same data dir, so the same database
    assert changes(second) == (baseline[0] + 1, baseline[1] + 1)
    second.stop()
    third = live_server(ready=False, max_batch_size=4)  # unchanged: no new change
    assert changes(third) == (baseline[0] + 1, baseline[1] + 1)

    database: Database = third.app.state.database
    assert len(_audit(database, "config.baseline")) == 1
    (change,) = _audit(database, "config.change")
    assert change.details["changed_fields"] == ["max_batch_size"]


def test_a_backup_made_by_the_cli_reaches_the_server_gauge(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = live_server(ready=False, backup_sync_interval_s=0.2)
    gauge = "backup_last_success_timestamp_seconds"
    with server.client() as client:
        started = time.time()
        assert metric_value(_metrics(client), gauge) < started
        env = {**os.environ, "MOBILE_MM_DATA_DIR": str(tmp_path)}
        env.pop("MOBILE_MM_DATABASE_URL", None)
        result = subprocess.run(
            [sys.executable, "-m", "mobile_multimodal.cli", "db", "backup", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        value = _wait_for(
            "the CLI's backup in /metrics",
            lambda: (v := metric_value(_metrics(client), gauge)) >= started and v,
        )
    database: Database = server.app.state.database
    with database.session() as s:
        (run,) = s.scalars(select(BackupRun))
    assert run.ok and run.finished_at is not None
    assert value == pytest.approx(run.finished_at.timestamp())


def test_an_oversized_chunked_body_is_an_anomaly(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(ready=False, max_body_bytes=8192)
    labels = {"event_type": "anomalous_request"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: SecurityMiddleware cannot see the size
        for _ in range(4):
            yield b"x" * 4096

    with server.client() as client:
        before = metric_value(_metrics(client), "security_events_total", **labels)
        response = client.post("/inference", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert metric_value(_metrics(client), "security_events_total", **labels) == before + 1
    (row,) = _audit(server.app.state.database, "request.anomaly")
    assert (row.resource, row.result, row.source_ip) == ("POST /inference", "failure", "127.0.0.1")
    assert row.details["rule"] == "oversized_body"


@pytest.mark.slow
def test_workers_count_tampering_and_config_changes_once(model_dir: Path, tmp_path: Path) -> None:
    """``--workers 2``: both workers check and answer /health, one of them counts and audits."""
    data = tmp_path / "data"
    data.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proc, url = _serve(model_dir, data, "--workers", "2", MOBILE_MM_INTEGRITY_CHECK_INTERVAL_S="0.3")
        procs.append(proc)

        def every_worker(path: str, status: int) -> bool:  # a new connection per request
            return all(httpx.get(url + path, timeout=60).status_code == status for _ in range(8))

        # which worker takes a connection is up to the kernel: each worker's log lines say it is
        # ready, and that it found the modification
        def workers_that_logged(message: str) -> set[str]:
            return _instances(data / "logs", lambda line: line["message"].startswith(message))

        _wait_for("both workers ready", lambda: len(workers_that_logged("model ready")) == 2)
        first_workers = workers_that_logged("model ready")
        _wait_for("both workers checked", lambda: every_worker("/health", 200))
        before = httpx.get(url + "/metrics", timeout=60).text
        assert metric_value(before, "model_integrity_ok") == 1

        _flip_last_byte(model_dir)
        found = "model integrity check failed"
        _wait_for("both workers found it", lambda: len(workers_that_logged(found)) == 2)
        assert every_worker("/health", 503)
        with httpx.Client(base_url=url, timeout=60) as client:
            _more_checks(client)  # more checks find the same modification: still one incident
        after = httpx.get(url + "/metrics", timeout=60).text
        assert metric_value(after, "model_integrity_ok") == 0
        assert metric_value(after, FAILURES, model_type="multimodal") == 1
        assert metric_value(after, "security_events_total", **TAMPERING) == 1
        database = Database(Settings(data_dir=data).resolved_database_url)
        assert len(_audit(database, "model.integrity_check")) == 1
        assert len(_audit(database, "config.baseline")) == 1
        proc.terminate()
        proc.wait(30)

        _flip_last_byte(model_dir)  # restored, so the restarted workers can load it
        proc, url = _serve(model_dir, data, "--workers", "2", MOBILE_MM_MAX_BATCH_SIZE="4")
        procs.append(proc)
        ready = "model ready"
        _wait_for("both new workers ready", lambda: len(workers_that_logged(ready) - first_workers) == 2)
        text = httpx.get(url + "/metrics", timeout=60).text
        assert metric_value(text, "config_changes_total", source="startup") == 1
        assert len(_audit(database, "config.change")) == 1
        database.dispose()
    finally:
        for p in procs:
            stop_group(p)  # (the supervisor and its workers: a killed supervisor leaves them running)
