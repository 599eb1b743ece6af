"""Alembic migrations: from an empty database and from release 0.1.0's schema, SQLite and PostgreSQL.

Release 0.1.0 built its schema with ``create_all``; ``schema_snapshots/v1_<dialect>.sql`` is that
schema as it compiled then (with its ``schema_version`` row), so an upgrade is tested against
the tables real deployments have, not against today's models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import SCHEMA_VERSION, ApiKey, Database, DatabaseError, SchemaVersion, migrate
from mobile_multimodal.store.tables import Base, User

SNAPSHOTS = Path(__file__).parent / "schema_snapshots"
V1_TABLES = {"schema_version", "api_keys", "audit_events", "config_state", "backup_runs", "export_records"}


def _day(day: int) -> datetime:
    return datetime(2026, 1, day, tzinfo=UTC)


def _load_v1(url: str, backend: str, *, without: str | None = None) -> None:
    """Build release 0.1.0's schema at ``url`` and add two users' keys the old way (a user string)."""
    lines = (SNAPSHOTS / f"v1_{backend}.sql").read_text().splitlines()
    sql = "\n".join(line for line in lines if not line.startswith("--"))
    statements = [stmt.strip() for stmt in sql.split(";") if stmt.strip()]
    engine = create_engine(url)
    with engine.begin() as conn:
        for stmt in statements:
            if without is not None and without in stmt:
                continue
            conn.execute(text(stmt))
        for key_id, user, key_type, day in (  # alice's oldest key is k_a2 (day 1)
            ("k_a1", "alice", "free", 3),
            ("k_a2", "alice", "pro", 1),
            ("k_b1", "bob", "free", 2),
        ):
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, user_id, key_type, is_admin, key_hash, prefix, created_at) "
                    "VALUES (:id, :u, :t, false, :h, 'mmk_x', :c)"
                ),
                {
                    "id": key_id,
                    "u": user,
                    "t": key_type,
                    "h": key_id * 8,
                    "c": datetime(2026, 1, day, tzinfo=UTC),
                },
            )
    engine.dispose()


def _schema_diff(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_an_empty_database_is_built_by_the_revisions_and_matches_the_models(db_url: str) -> None:
    with Database(db_url) as db:
        assert db.current_revision() == migrate.head() == migrate.revisions()[-1]
        assert V1_TABLES | {"users", "alembic_version"} <= set(inspect(db.engine).get_table_names())
        assert _schema_diff(db) == []  # the revisions build exactly what the models declare
        with db.session() as s:
            assert list(s.scalars(select(SchemaVersion.version))) == list(range(1, SCHEMA_VERSION + 1))


def test_a_release_0_1_database_is_upgraded_with_its_keys_moved_to_users(db_url: str) -> None:
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    if backend == "sqlite":
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    _load_v1(db_url, backend)
    with Database(db_url) as db:
        assert db.current_revision() == migrate.head()
        assert _schema_diff(db) == []
        with db.session() as s:
            users = {u.id: (u.user_type, u.created_at) for u in s.scalars(select(User))}
            assert users == {
                "alice": ("pro", datetime(2026, 1, 1, tzinfo=UTC)),  # a pro key makes the user pro
                "bob": ("free", datetime(2026, 1, 2, tzinfo=UTC)),
            }
            assert sorted(s.scalars(select(ApiKey.id))) == ["k_a1", "k_a2", "k_b1"]
        # the keys' constraints survived the table rebuild (SQLite batch mode)
        with pytest.raises(IntegrityError), db.session() as s:
            s.execute(text("UPDATE api_keys SET key_type = 'gold' WHERE id = 'k_b1'"))
        with pytest.raises(IntegrityError), db.session() as s:
            s.execute(text("UPDATE api_keys SET user_id = 'nobody' WHERE id = 'k_b1'"))
        # and the store works on it: a new key for a new user creates the user
        create_key(db, "carol", "free")
        with db.session() as s:
            assert s.get(User, "carol") is not None


def test_a_release_0_1_database_without_export_records_gets_the_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _load_v1(url, "sqlite", without="export_records")
    with Database(url) as db:
        assert "export_records" in inspect(db.engine).get_table_names()
        assert _schema_diff(db) == []


def test_downgrade_to_the_baseline_and_up_again_keeps_the_keys(db_url: str) -> None:
    with Database(db_url) as db:
        create_key(db, "alice", "pro")
        assert db.downgrade("r0001") == "r0001"
        assert "users" not in inspect(db.engine).get_table_names()
        with db.session() as s:
            assert list(s.scalars(select(SchemaVersion.version))) == [1]
            assert list(s.scalars(select(ApiKey.user_id))) == ["alice"]
        assert db.upgrade() == migrate.head()
        with db.session() as s:
            assert s.get(User, "alice") is not None and s.get(User, "alice").user_type == "pro"  # type: ignore[union-attr]
        assert _schema_diff(db) == []


def test_a_database_from_a_newer_release_is_refused(db_url: str) -> None:
    with Database(db_url) as db, db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'r9999'"))
    with pytest.raises(DatabaseError, match="'r9999', newer than this release"):
        Database(db_url)


def test_an_unknown_downgrade_target_is_a_clear_error(db: Database) -> None:
    with pytest.raises(DatabaseError, match="r0000"):
        db.downgrade("r0000")
    assert db.current_revision() == migrate.head()
