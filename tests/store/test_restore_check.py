"""restore_check: a real restore into a scratch database, row counts compared with the sidecar."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import inspect

from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import Database, backup
from mobile_multimodal.store.backup_verify import sidecar_path
from mobile_multimodal.store.restore_check import restore_check


def test_a_backup_restores_with_the_recorded_row_counts(db: Database, tmp_path: Path) -> None:
    create_key(db, "alice", "pro")
    path = backup(db, tmp_path / "bk")
    check = restore_check(path, db)
    assert check.ok, check.errors
    assert check.row_counts == check.expected
    assert check.row_counts["api_keys"] == 1 and check.row_counts["users"] == 1
    if db.backend == "postgresql":  # the scratch database was dropped again
        with db.engine.connect() as conn:
            names = conn.exec_driver_sql("SELECT datname FROM pg_database").scalars().all()
        assert not [n for n in names if n.startswith("mm_restore_check_")]
    assert "mm_restore_check" not in str(inspect(db.engine).get_table_names())


def test_counts_that_differ_from_the_sidecar_fail_the_check(db: Database, tmp_path: Path) -> None:
    create_key(db, "alice", "pro")
    path = backup(db, tmp_path / "bk")
    meta = json.loads(sidecar_path(path).read_text())
    meta["row_counts"]["api_keys"] = 5  # what the backup claimed to hold
    sidecar_path(path).write_text(json.dumps(meta))
    check = restore_check(path, db)
    assert not check.ok and check.expected["api_keys"] == 5
    # restore() itself refuses a copy that fails verification, so nothing is restored
    assert "refusing to restore" in check.errors[0] and "row counts" in check.errors[0]
    assert check.row_counts == {}


def test_a_pg_dump_needs_a_postgresql_server(pg_url: str, tmp_path: Path) -> None:
    with Database(pg_url) as db:
        path = backup(db, tmp_path / "bk")
    check = restore_check(path, None)
    assert not check.ok and "needs a PostgreSQL server" in check.errors[0]
    assert check.row_counts == {}  # nothing was restored
