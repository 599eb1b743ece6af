"""`mobile-mm db` and `mobile-mm users` end to end through the CLI, on SQLite and PostgreSQL.

One sequence per backend: back up, verify with a scratch restore, change the database,
restore the backup, check the schema revision, clean up, export and erase a user; every step's
audit row is checked at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.settings import get_settings
from mobile_multimodal.store import ApiKey, AuditEvent, Database, migrate


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    value = (
        f"sqlite:///{tmp_path / 'mm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    monkeypatch.setenv("MOBILE_MM_DATABASE_URL", value)
    monkeypatch.setenv("MOBILE_MM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MOBILE_MM_BACKUP_KEEP", "2")
    get_settings.cache_clear()
    yield value
    get_settings.cache_clear()


def _run(*args: str) -> str:
    out = CliRunner().invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def test_backup_verify_restore_cleanup_and_users(url: str, tmp_path: Path) -> None:
    with Database(url) as db:
        create_key(db, "alice", "pro")
        create_key(db, "bob", "free")
    backups = tmp_path / "bk"
    report = json.loads(_run("db", "backup", "--out", str(backups), "--json"))
    path = Path(report["path"])

    verified = json.loads(_run("db", "verify", str(path), "--json"))
    check = verified["restore_check"]
    assert verified["ok"] and check["ok"], check
    assert check["row_counts"] == check["expected"] and check["row_counts"]["api_keys"] == 2
    assert "restore check  OK" in _run("db", "verify", str(path))

    with Database(url) as db:
        create_key(db, "carol", "free")  # a change the restore must undo
    restored = json.loads(_run("db", "restore", str(path), "--yes", "--json"))
    assert restored["revision"] == migrate.head()
    with Database(url) as db, db.session() as s:
        assert sorted(s.scalars(select(ApiKey.user_id))) == ["alice", "bob"]
    assert f"{migrate.head()} (up to date" in _run("db", "current")

    for _ in range(2):  # three backups with MOBILE_MM_BACKUP_KEEP=2: the oldest is pruned
        _run("db", "backup", "--out", str(backups))
    assert not path.exists() and len(list(backups.glob(f"mobile_mm-*{path.suffix}"))) == 2

    cleaned = json.loads(_run("db", "cleanup", "--json"))
    assert cleaned["ok"] and set(cleaned["removed"]) == {"audit_events", "log_files", "profiles", "backups"}

    assert "wrote what is held about alice" in _run(
        "users", "export", "alice", "--out", str(tmp_path / "a.json")
    )
    exported = json.loads((tmp_path / "a.json").read_text())
    printed = json.loads(_run("users", "export", "alice"))
    assert (printed["user"], printed["api_keys"]) == (exported["user"], exported["api_keys"])
    assert printed["audit_events"][-1]["action"] == "user.export"  # the first export, audited
    assert exported["user"]["user_type"] == "pro" and len(exported["api_keys"]) == 1
    erased = _run("users", "delete", "alice", "--yes")
    token = erased.split("calls them ")[1].strip()
    missing = CliRunner().invoke(app, ["users", "export", "alice"])
    assert missing.exit_code == 1 and "no user 'alice'" in missing.output

    with Database(url) as db, db.session() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    actions = [e.action for e in events if e.action.startswith(("db.", "retention.", "user."))]
    assert actions[-5:] == ["db.backup", "retention.cleanup", "user.export", "user.export", "user.erase"]
    assert "db.restore" in actions
    erasure = events[-1]
    assert erasure.resource == f"users/{token}" and "alice" not in repr((erasure.details, erasure.resource))
    left = [(e.action, e.user_id, e.details, e.resource) for e in events]
    assert not [e for e in left if "alice" in repr(e)], left


def test_a_corrupt_backup_fails_verify_and_is_not_restored(url: str, tmp_path: Path) -> None:
    with Database(url) as db:
        create_key(db, "alice", "pro")
    path = Path(json.loads(_run("db", "backup", "--out", str(tmp_path / "bk"), "--json"))["path"])
    path.write_bytes(path.read_bytes()[:-64])  # truncated
    bad = CliRunner().invoke(app, ["db", "verify", str(path)])
    assert bad.exit_code == 1 and "FAILED" in bad.output
    refused = CliRunner().invoke(app, ["db", "restore", str(path), "--yes"])
    assert refused.exit_code == 1 and "refusing to restore" in refused.output
    with Database(url) as db, db.session() as s:
        assert list(s.scalars(select(ApiKey.user_id))) == ["alice"]


def test_upgrade_and_downgrade_by_hand(url: str) -> None:
    assert "empty ->" in _run("db", "upgrade") or "already at" in _run("db", "upgrade")
    assert "-> r0001" in _run("db", "downgrade", "r0001")
    assert "behind" in _run("db", "current")
    assert f"r0001 -> {migrate.head()}" in _run("db", "upgrade")
    bad = CliRunner().invoke(app, ["db", "downgrade", "r0000"])
    assert bad.exit_code == 1 and "r0000" in bad.output
