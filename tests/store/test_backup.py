"""Backups on SQLite and PostgreSQL: written, verified, restored to the same rows; damage caught."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select
from typer.testing import CliRunner

from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import (
    SCHEMA_VERSION,
    ApiKey,
    AuditEvent,
    BackupError,
    BackupMetricsSync,
    BackupRun,
    Database,
    backup,
    restore,
    verify,
)


def _failures() -> float:
    return REGISTRY.get_sample_value("backup_failures_total") or 0.0


def _last_success() -> float:
    return REGISTRY.get_sample_value("backup_last_success_timestamp_seconds") or 0.0


def _seed(db: Database) -> list[tuple[str, str, dict[str, object]]]:
    create_key(db, "alice", "pro")
    create_key(db, "bob", "free")
    with db.session() as s:
        for i in range(5):
            s.add(
                AuditEvent(
                    user_id=f"u{i}",
                    action="test",
                    resource=f"r/{i}",
                    result="success",
                    source_ip="10.0.0.1",
                    details={"i": i, "text": "tab\there"},
                )
            )
    return _audit_rows(db)


def _audit_rows(db: Database) -> list[tuple[str, str, dict[str, object]]]:
    with db.session() as s:
        return [
            (e.user_id, e.resource, e.details) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]


def test_backup_verify_restore_roundtrip(db: Database, tmp_path: Path) -> None:
    before = _seed(db)
    with db.session() as s:
        keys_before = sorted((k.id, k.key_hash) for k in s.scalars(select(ApiKey)))
    last_before = _last_success()

    path = backup(db, tmp_path / "backups")

    assert path.exists() and path.parent == tmp_path / "backups"
    assert _last_success() > last_before
    result = verify(path)
    assert result.ok, result.errors
    assert result.format == ("sqlite" if db.backend == "sqlite" else "pg_dump")
    assert result.row_counts["audit_events"] == len(before) == 7  # 5 + the two key.create audits
    assert result.row_counts["api_keys"] == 2
    assert result.schema_version == SCHEMA_VERSION
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["sha256"] == result.sha256 == result.sha256_expected
    with db.session() as s:
        run = s.scalars(select(BackupRun)).one()
    assert run.ok and run.path == str(path) and run.sha256 == result.sha256

    # lose data, then restore: the same rows come back
    with db.session() as s:
        s.execute(delete(AuditEvent))
        s.execute(delete(ApiKey))
    assert _audit_rows(db) == []
    restore(path, db)
    assert _audit_rows(db) == before
    with db.session() as s:
        assert sorted((k.id, k.key_hash) for k in s.scalars(select(ApiKey))) == keys_before


def test_tampered_backup_fails_verification(db: Database, tmp_path: Path) -> None:
    _seed(db)
    path = backup(db, tmp_path)
    data = bytearray(path.read_bytes())
    # flip a byte in the rows' area (SQLite: the last page; pg_dump: inside a COPY line)
    at = len(data) - 100 if db.backend == "sqlite" else data.index(b"r/3")
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify(path)
    assert not result.ok
    assert any("differs from the sidecar" in e for e in result.errors)
    with pytest.raises(BackupError, match="refusing to restore"):
        restore(path, db)


def test_missing_sidecar_and_missing_file(db: Database, tmp_path: Path) -> None:
    path = backup(db, tmp_path)
    path.with_name(path.name + ".json").unlink()
    result = verify(path)
    assert not result.ok and any("sidecar" in e for e in result.errors)
    assert not verify(tmp_path / "nope.db").ok


def test_truncated_pg_dump_is_detected(tmp_path: Path) -> None:
    dump = tmp_path / "d.sql"
    dump.write_text(
        "--\n-- PostgreSQL database dump\n--\nCOPY public.audit_events (id, user_id) FROM stdin;\n1\tu\n"
    )
    result = verify(dump)
    assert not result.ok
    assert result.integrity.startswith("incomplete")


def test_corrupt_sqlite_backup_fails_integrity_check(tmp_path: Path) -> None:
    import hashlib
    import sqlite3

    src = Database(f"sqlite:///{tmp_path / 'live.db'}")
    _seed(src)
    path = backup(src, tmp_path / "b")
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='audit_events'").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    at = (root - 1) * page_size + 3  # the b-tree page header's cell count
    data[at : at + 2] = b"\xff\xff"
    path.write_bytes(bytes(data))
    # give the sidecar the damaged file's hash: only the integrity check can catch this now
    side = path.with_name(path.name + ".json")
    meta = json.loads(side.read_text())
    meta["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    side.write_text(json.dumps(meta))
    result = verify(path)
    assert not result.ok
    assert result.integrity != "ok"
    assert any(e.startswith("integrity check failed") for e in result.errors)
    assert not any("sha256" in e for e in result.errors)


def test_backup_failure_counts_once_and_is_recorded(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'live.db'}")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory should be")
    before = _failures()
    with pytest.raises(BackupError, match="cannot create backup directory"):
        backup(db, blocker / "backups")
    assert _failures() == before + 1
    with db.session() as s:
        run = s.scalars(select(BackupRun)).one()
    assert not run.ok and run.error and "cannot create backup directory" in run.error


def test_metrics_sync_sees_backups_of_other_processes(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'live.db'}")
    with db.session() as s:  # history before the server started: not counted
        s.add(BackupRun(started_at=datetime.now(UTC), ok=False, error="old"))
    sync = BackupMetricsSync(db)
    sync.sync()
    failures = _failures()
    finished = datetime(2030, 1, 1, tzinfo=UTC)
    with db.session() as s:  # what `mobile-mm db backup` in another process writes
        s.add(BackupRun(started_at=finished, finished_at=finished, ok=True, path="x"))
        s.add(BackupRun(started_at=finished, finished_at=finished, ok=False, error="disk full"))
    sync.sync()
    assert _failures() == failures + 1
    assert _last_success() == finished.timestamp()
    sync.sync()
    assert _failures() == failures + 1  # each failure counted once


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_cli_backup_and_verify(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from mobile_multimodal.cli import app
    from mobile_multimodal.settings import get_settings

    url = str(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url"))
    monkeypatch.setenv("MOBILE_MM_DATABASE_URL", url)
    monkeypatch.setenv("MOBILE_MM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = runner.invoke(app, ["db", "backup", "--out", str(tmp_path / "bk"), "--json"])
        assert out.exit_code == 0, out.output
        report = json.loads(out.output)
        assert report["ok"] is True
        path = Path(report["path"])
        ok = runner.invoke(app, ["db", "verify", str(path)])
        assert ok.exit_code == 0 and ok.output.startswith("OK")
        path.write_bytes(path.read_bytes() + b"x")
        bad = runner.invoke(app, ["db", "verify", str(path)])
        assert bad.exit_code == 1 and "FAILED" in bad.output
        with Database(url) as db, db.session() as s:
            actions = [e.action for e in s.scalars(select(AuditEvent))]
        assert actions == ["db.backup"]
    finally:
        get_settings.cache_clear()
