"""Prove a backup restores: restore it into a scratch database and count every table's rows.

:func:`.verify.verify` reads the backup file; this goes one step further and runs the real
restore (:func:`.backup.restore`) into a throwaway database, then compares the row count of
each table there with what the backup's sidecar recorded at backup time:

* a SQLite backup is restored into a new SQLite file in a temporary directory;
* a pg_dump backup is restored with ``psql`` into a temporary database created on the
  configured PostgreSQL server (``CREATE DATABASE mm_restore_check_<hex>``), dropped afterwards
  whatever happened. Without a PostgreSQL server to use, the check says so and does not pass.

Example::

    check = restore_check(Path("var/backups/mobile_mm-20250101T020000Z.db"))
    assert check.ok, check.errors
    print(check.row_counts)
"""

from __future__ import annotations

import json
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select, table, text
from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.store.backup import BackupError, restore
from mobile_multimodal.store.backup_verify import detect_format, sidecar_path
from mobile_multimodal.store.database import Database, DatabaseError


@dataclass
class RestoreCheck:
    """What :func:`restore_check` found; ``ok`` only when the restore ran and every count matched."""

    ok: bool
    target: str  # where it restored (password masked), or "" when it could not start
    row_counts: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_rows(db: Database) -> dict[str, int]:
    """Rows per table of ``db`` (every table, the migration bookkeeping included)."""
    with db.engine.connect() as conn:
        names = sorted(inspect(conn).get_table_names())
        return {name: int(conn.scalar(select(func.count()).select_from(table(name))) or 0) for name in names}


def _expected(path: Path) -> dict[str, int]:
    meta = json.loads(sidecar_path(path).read_text())
    return {str(k): int(v) for k, v in dict(meta["row_counts"]).items()}


def _compare(check: RestoreCheck) -> RestoreCheck:
    if check.row_counts != check.expected:
        tables = sorted(set(check.row_counts) | set(check.expected))
        diffs = [
            f"{t}: restored {check.row_counts.get(t)} rows, backup recorded {check.expected.get(t)}"
            for t in tables
            if check.row_counts.get(t) != check.expected.get(t)
        ]
        check.errors.append("row counts differ after the restore: " + "; ".join(diffs))
    check.ok = not check.errors
    return check


def restore_check(path: Path, server: Database | None = None) -> RestoreCheck:
    """Restore ``path`` into a scratch database and compare row counts with its sidecar.

    ``server`` is the configured database: its PostgreSQL server hosts the scratch database for
    a pg_dump backup (ignored for SQLite backups).
    """
    path = Path(path)
    try:
        expected = _expected(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return RestoreCheck(
            False, "", errors=[f"no row counts to compare with ({sidecar_path(path).name}): {exc}"]
        )
    fmt = detect_format(path) if path.is_file() else "unknown"
    if fmt == "sqlite":
        return _sqlite_check(path, expected)
    if fmt == "pg_dump":
        if server is None or server.backend != "postgresql":
            return RestoreCheck(
                False,
                "",
                expected=expected,
                errors=[
                    "a pg_dump backup needs a PostgreSQL server for its scratch restore: set "
                    "MOBILE_MM_DATABASE_URL to the PostgreSQL database it came from"
                ],
            )
        return _postgres_check(path, expected, server)
    return RestoreCheck(False, "", expected=expected, errors=[f"{path} is not a backup this project writes"])


def _sqlite_check(path: Path, expected: dict[str, int]) -> RestoreCheck:
    with tempfile.TemporaryDirectory(prefix="mm-restore-check-") as tmp:
        scratch = Database(f"sqlite:///{Path(tmp) / 'scratch.db'}", create_schema=False)
        check = RestoreCheck(False, f"a scratch SQLite copy in {tmp}", expected=expected)
        try:
            restore(path, scratch)
            check.row_counts = count_rows(scratch)
        except (BackupError, DatabaseError, SQLAlchemyError, OSError) as exc:
            check.errors.append(f"restore into the scratch copy failed: {exc}")
        finally:
            scratch.dispose()
    return _compare(check)


def _postgres_check(path: Path, expected: dict[str, int], server: Database) -> RestoreCheck:
    name = "mm_restore_check_" + secrets.token_hex(6)
    scratch_url = server.url.set(database=name)
    check = RestoreCheck(False, scratch_url.render_as_string(hide_password=True), expected=expected)
    admin = server.engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # name is ours: a fixed prefix + hex
    except SQLAlchemyError as exc:
        check.errors.append(f"cannot create the scratch database {name}: {exc}")
        return _compare(check)
    try:
        scratch = Database(scratch_url, create_schema=False)
        try:
            restore(path, scratch)
            check.row_counts = count_rows(scratch)
        finally:
            scratch.dispose()
    except (BackupError, DatabaseError, SQLAlchemyError, OSError) as exc:
        check.errors.append(f"restore into the scratch database failed: {exc}")
    finally:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except SQLAlchemyError as exc:
            check.errors.append(f"the scratch database {name} could not be dropped: {exc}")
    return _compare(check)
