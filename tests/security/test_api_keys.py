"""API keys: secrets never stored, lookups by hash, revocation, audit rows, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from mobile_multimodal.security.api_keys import (
    KEY_PREFIX,
    KeyNotFoundError,
    create_key,
    hash_key,
    list_keys,
    lookup_key,
    revoke_key,
)
from mobile_multimodal.store import ApiKey, AuditEvent, Database


def test_create_key_stores_only_the_hash(db: Database) -> None:
    key, record = create_key(db, "alice", "pro")
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43
    assert record.key_hash == hash_key(key) != key
    assert key.startswith(record.prefix) and len(record.prefix) == 12
    with db.engine.connect() as conn:  # the secret appears nowhere in the stored row
        rows = conn.execute(text("SELECT * FROM api_keys")).fetchall()
    assert len(rows) == 1
    assert all(key not in str(value) for value in rows[0])
    if db.sqlite_path is not None:  # nor in the file's bytes (free pages, journal)
        assert key.encode() not in db.sqlite_path.read_bytes()
    else:  # nor in any row of any table
        with db.engine.connect() as conn:
            tables = [t for t in inspect(conn).get_table_names()]
            dumped = [str(conn.execute(text(f'SELECT * FROM "{t}"')).fetchall()) for t in tables]
        assert tables and not any(key in d for d in dumped)


def test_keys_are_unique_and_looked_up_by_hash(db: Database) -> None:
    k1, r1 = create_key(db, "alice", "free")
    k2, r2 = create_key(db, "alice", "free")
    assert k1 != k2 and r1.id != r2.id
    found = lookup_key(db, k2)
    assert found is not None and found.id == r2.id and found.user_id == "alice"
    assert lookup_key(db, k1[:-1] + ("A" if k1[-1] != "A" else "B")) is None
    assert lookup_key(db, "not-a-key") is None


def test_revoke_and_list(db: Database) -> None:
    _, r1 = create_key(db, "alice", "pro")
    _, r2 = create_key(db, "bob", "free", admin=True)
    revoked = revoke_key(db, r1.id, actor="cli:ops")
    assert revoked.revoked_at is not None
    again = revoke_key(db, r1.id)  # idempotent: the first time is kept
    assert again.revoked_at == revoked.revoked_at
    assert [r.id for r in list_keys(db)] == [r1.id, r2.id]
    assert [r.id for r in list_keys(db, include_revoked=False)] == [r2.id]
    assert list_keys(db, user_id="bob")[0].is_admin
    with pytest.raises(KeyNotFoundError, match="keys list"):
        revoke_key(db, "k_missing")
    with db.session() as s:
        audit = [
            (e.action, e.user_id, e.resource) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]
    assert audit[:3] == [
        ("key.create", "system", f"api_keys/{r1.id}"),
        ("key.create", "system", f"api_keys/{r2.id}"),
        ("key.revoke", "cli:ops", f"api_keys/{r1.id}"),
    ]


@pytest.mark.parametrize("user", ["", "a b", "-x", "x" * 129, "ünï"])
def test_bad_user_ids_are_refused(db: Database, user: str) -> None:
    with pytest.raises(ValueError, match="invalid user id"):
        create_key(db, user)


def test_bad_key_type_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="free, pro"):
        create_key(db, "alice", "gold")


def test_cli_create_list_revoke(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_multimodal.cli import app
    from mobile_multimodal.settings import get_settings

    monkeypatch.setenv("MOBILE_MM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MOBILE_MM_DATABASE_URL", db_url)  # SQLite or PostgreSQL
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        created = runner.invoke(app, ["keys", "create", "--user", "carol", "--type", "pro", "--json"])
        assert created.exit_code == 0, created.output
        info = json.loads(created.output)
        assert info["key"].startswith("mmk_") and info["key_type"] == "pro" and info["user_id"] == "carol"

        listed = runner.invoke(app, ["keys", "list"])
        assert listed.exit_code == 0 and info["id"] in listed.output and "active" in listed.output
        assert info["key"] not in listed.output  # never the secret
        listed_json = json.loads(runner.invoke(app, ["keys", "list", "--json"]).output)
        assert "key" not in listed_json[0] and "key_hash" not in listed_json[0]

        assert runner.invoke(app, ["keys", "revoke", info["id"]]).exit_code == 0
        assert "revoked" in runner.invoke(app, ["keys", "list"]).output
        assert runner.invoke(app, ["keys", "revoke", "k_nope"]).exit_code == 1
        assert runner.invoke(app, ["keys", "create", "--user", "x y"]).exit_code == 2

        with Database(db_url) as db:
            record = lookup_key(db, info["key"])
            assert record is not None and record.revoked_at is not None
            with db.session() as s:
                assert s.scalars(select(ApiKey)).one().id == info["id"]
    finally:
        get_settings.cache_clear()
