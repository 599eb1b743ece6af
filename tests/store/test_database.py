"""Database: schema, sessions, ping, SQLite settings — on SQLite and PostgreSQL (its statement
spans: test_query_tracing.py)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from mobile_multimodal.settings import Settings
from mobile_multimodal.store import SCHEMA_VERSION, AuditEvent, Database, DatabaseError, SchemaVersion


def test_schema_created_and_versioned(db: Database) -> None:
    assert db.schema_version() == SCHEMA_VERSION
    with db.engine.connect() as conn:
        tables = set(db.engine.dialect.get_table_names(conn))
    assert {"api_keys", "audit_events", "config_state", "backup_runs", "schema_version"} <= tables


def test_reopening_keeps_data_and_version(db_url: str) -> None:
    with Database(db_url) as first, first.session() as s:
        s.add(AuditEvent(user_id="u1", action="test", resource="r", result="success", details={"n": 1}))
    with Database(db_url) as second, second.session() as s:
        rows = s.scalars(select(AuditEvent)).all()
        versions = s.scalars(select(SchemaVersion.version)).all()
    assert [(r.user_id, r.details) for r in rows] == [("u1", {"n": 1})]
    # one row per applied revision; a second start must not add another
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_newer_schema_is_refused(db_url: str) -> None:
    with Database(db_url) as db, db.session() as s:
        s.execute(insert(SchemaVersion).values(version=SCHEMA_VERSION + 1, applied_at=datetime.now(UTC)))
    with pytest.raises(DatabaseError, match=f"schema v{SCHEMA_VERSION + 1}, newer than this release"):
        Database(db_url)


def test_session_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        s.add(AuditEvent(user_id="u", action="a", resource="r", result="success"))
        s.flush()
        raise RuntimeError("boom")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_check_constraint_rejects_unknown_result(db: Database) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), db.session() as s:
        s.add(AuditEvent(user_id="u", action="a", resource="r", result="maybe"))


def test_timestamps_come_back_timezone_aware(db: Database) -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    with db.session() as s:
        s.add(AuditEvent(timestamp=when, user_id="u", action="a", resource="r", result="success"))
    with db.session() as s:
        got = s.scalars(select(AuditEvent.timestamp)).one()
    assert got == when and got.tzinfo is not None


def test_ping_measures_latency(db: Database) -> None:
    latency = db.ping()
    assert 0 < latency < 5


def test_sqlite_defaults_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_multimodal import settings as settings_mod

    monkeypatch.setattr(settings_mod, "get_settings", lambda: Settings(data_dir=tmp_path / "nested" / "data"))
    with Database() as db:
        assert db.sqlite_path == tmp_path / "nested" / "data" / "mobile_mm.db"
        assert db.sqlite_path.exists()
        with db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    # WAL is a property of the file: another process (plain sqlite3) sees it too
    raw = sqlite3.connect(tmp_path / "nested" / "data" / "mobile_mm.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_memory_sqlite_shares_one_database() -> None:
    with Database("sqlite://") as db:
        with db.session() as s:
            s.add(AuditEvent(user_id="u", action="a", resource="r", result="success"))
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(AuditEvent)) == 1


def test_unreachable_postgres_is_a_clear_error() -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # bound, never listening: nobody else can listen there meanwhile
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(DatabaseError, match=rf"postgres:\*\*\*@127\.0\.0\.1:{port}/x"):
            Database(f"postgresql://postgres:secret@127.0.0.1:{port}/x", connect_timeout_s=2)


def test_ping_failure_names_database_without_password(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    db.dispose()  # an open connection would keep working from its cached pages
    (tmp_path / "a.db").write_bytes(b"this is not a database file" * 100)
    with pytest.raises(DatabaseError, match=r"is unavailable: file is not a database") as info:
        db.ping()
    assert info.value.code == "DATABASE_UNAVAILABLE"


def test_unsupported_and_invalid_urls() -> None:
    with pytest.raises(DatabaseError, match="unsupported database 'mysql'"):
        Database("mysql://u@h/db")
    with pytest.raises(DatabaseError, match="invalid database URL"):
        Database("not a url")


def test_concurrent_first_start_creates_schema_once(db_url: str) -> None:
    # `serve --workers N` opens the same new SQLite file from N processes at once, and replicas
    # starting together open the same new PostgreSQL database: the lock around the migrations (a
    # file lock; PostgreSQL's advisory lock) must apply each revision once, no "table exists".
    from concurrent.futures import ThreadPoolExecutor

    url = db_url

    def open_db(_: int) -> int | None:
        with Database(url) as db:
            return db.schema_version()

    # Bounded: without the lock, PostgreSQL first starts blocked each other (still after 5 min here),
    # and the fixture's DROP DATABASE ... WITH (FORCE) then ends the stuck connections.
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        futures = [pool.submit(open_db, i) for i in range(4)]
        versions = [future.result(timeout=300) for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert versions == [SCHEMA_VERSION] * 4
    with Database(url) as db, db.session() as s:
        assert s.scalars(select(SchemaVersion.version)).all() == list(range(1, SCHEMA_VERSION + 1))
