"""Database backups: write a consistent copy, verify it, record the outcome.

SQLite uses the online backup API (a consistent snapshot while the service keeps writing);
PostgreSQL uses ``pg_dump`` in plain format with ``--clean --if-exists`` so the dump restores
over an existing schema. A backup only counts as successful once :func:`.verify.verify` has
re-read the copy: then ``backup_last_success_timestamp_seconds`` is set; any failure increments
``backup_failures_total``. Each attempt is also a ``backup_runs`` row, which is how the serving
process learns about backups run by ``mobile-mm db backup`` (see :mod:`.backup_metrics`).

Example::

    from mobile_multimodal.store import Database, backup, verify
    path = backup(Database(), Path("var/backups"))     # raises BackupError on failure
    assert verify(path).ok
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.observability import metrics
from mobile_multimodal.store.backup_verify import (
    VerifyResult,
    inspect_pg_dump,
    inspect_sqlite,
    sidecar_path,
)
from mobile_multimodal.store.backup_verify import verify as verify_backup
from mobile_multimodal.store.database import Database
from mobile_multimodal.store.tables import BackupRun

log = logging.getLogger(__name__)
PG_DUMP_TIMEOUT_S = 3600
# ids of backup_runs rows whose metrics this process already applied (see backup_metrics).
LOCAL_RUN_IDS: set[int] = set()


class BackupError(RuntimeError):
    """A backup or restore could not be completed; the message says why and what to do."""


def backup(db: Database, dest_dir: Path) -> Path:
    """Back up ``db`` into ``dest_dir`` and return the verified copy's path.

    Writes ``mobile_mm-<UTC time>.db`` (SQLite) or ``.sql`` (PostgreSQL) plus a ``.json``
    sidecar holding its sha256, size and row counts.
    """
    started = datetime.now(UTC)
    try:
        path = _write_and_verify(db, Path(dest_dir), started)
    except BackupError as exc:
        metrics.BACKUP_FAILURES.inc()
        _record_run(db, started, ok=False, error=str(exc))
        raise
    metrics.BACKUP_LAST_SUCCESS.set(time.time())
    _record_run(db, started, ok=True, path=path)
    return path


def _write_and_verify(db: Database, dest_dir: Path, started: datetime) -> Path:
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create backup directory {dest_dir}: {exc}") from exc
    suffix = ".db" if db.backend == "sqlite" else ".sql"
    path = _free_name(dest_dir, f"mobile_mm-{started:%Y%m%dT%H%M%SZ}", suffix)
    partial = path.with_name(path.name + ".partial")
    try:
        if db.backend == "sqlite":
            _sqlite_copy(db, partial)
            integrity, counts, version = inspect_sqlite(partial)
        else:
            _pg_dump(db, partial)
            integrity, counts, version = inspect_pg_dump(partial)
        if integrity != "ok":
            raise BackupError(f"the fresh copy fails its integrity check: {integrity}")
        sidecar = {
            "file": path.name,
            "created_at": started.isoformat(),
            "source": db.safe_url,
            "backend": db.backend,
            "schema_version": version,
            "row_counts": counts,
            "size_bytes": partial.stat().st_size,
            "sha256": sha256_file(partial),
        }
        sidecar_path(path).write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(partial, path)  # appears under its final name only once complete
    except (OSError, sqlite3.Error) as exc:
        raise BackupError(f"backup to {dest_dir} failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    result = verify_backup(path)
    if not result.ok:
        raise BackupError(f"backup {path} failed verification: {'; '.join(result.errors)}")
    return path


def _free_name(dest_dir: Path, stem: str, suffix: str) -> Path:
    path = dest_dir / f"{stem}{suffix}"
    n = 1
    while path.exists() or sidecar_path(path).exists():
        path = dest_dir / f"{stem}-{n}{suffix}"
        n += 1
    return path


def _sqlite_copy(db: Database, dest: Path) -> None:
    raw = db.engine.raw_connection()
    try:
        target = sqlite3.connect(dest)
        try:
            raw.driver_connection.backup(target)  # type: ignore[union-attr]
            # The copy inherits WAL mode from the live file; a backup should be one
            # self-contained file that opens without creating -wal/-shm companions.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        raw.close()


def _pg_env(db: Database) -> dict[str, str]:
    """libpq environment for the database: keeps the password off the command line (ps)."""
    url = db.url
    env = dict(os.environ)
    for var, value in (
        ("PGHOST", url.host),
        ("PGPORT", url.port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value is not None:
            env[var] = str(value)
    if "sslmode" in url.query:
        env["PGSSLMODE"] = str(url.query["sslmode"])
    return env


def _pg_tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise BackupError(
            f"{name} is not installed; install the PostgreSQL client tools "
            "(Debian: apt-get install postgresql-client) matching the server's major version"
        )
    return exe


def _pg_dump(db: Database, dest: Path) -> None:
    cmd = [
        _pg_tool("pg_dump"),
        "--format=plain",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
        f"--file={dest}",
    ]
    try:
        proc = subprocess.run(cmd, env=_pg_env(db), capture_output=True, text=True, timeout=PG_DUMP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"pg_dump of {db.safe_url} took longer than {PG_DUMP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise BackupError(f"pg_dump of {db.safe_url} failed (exit {proc.returncode}): {proc.stderr.strip()}")


def restore(path: Path, db: Database) -> VerifyResult:
    """Replace the contents of ``db`` with the verified backup at ``path``; returns its check.

    Refuses a backup that fails :func:`verify` or whose format does not match the database.
    """
    result = verify_backup(Path(path))
    if not result.ok:
        raise BackupError(f"refusing to restore {path}: {'; '.join(result.errors)}")
    wanted = "sqlite" if db.backend == "sqlite" else "pg_dump"
    if result.format != wanted:
        raise BackupError(f"{path} is a {result.format} backup; {db.safe_url} needs a {wanted} backup")
    if db.backend == "sqlite":
        src = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        raw = db.engine.raw_connection()
        try:
            src.backup(raw.driver_connection)  # type: ignore[arg-type]
        finally:
            raw.close()
            src.close()
    else:
        cmd = [_pg_tool("psql"), "--quiet", "--no-psqlrc", "--set=ON_ERROR_STOP=1", f"--file={path}"]
        proc = subprocess.run(cmd, env=_pg_env(db), capture_output=True, text=True, timeout=PG_DUMP_TIMEOUT_S)
        if proc.returncode != 0:
            raise BackupError(f"psql restore into {db.safe_url} failed: {proc.stderr.strip()}")
    db.dispose()  # pooled connections may cache the old schema
    return result


def _record_run(
    db: Database, started: datetime, *, ok: bool, path: Path | None = None, error: str | None = None
) -> None:
    size = path.stat().st_size if path is not None else None
    digest = sha256_file(path) if path is not None else None
    try:
        with db.session() as s:
            run = BackupRun(
                started_at=started,
                finished_at=datetime.now(UTC),
                ok=ok,
                path=str(path) if path is not None else None,
                sha256=digest,
                size_bytes=size,
                error=error[:2000] if error else None,
            )
            s.add(run)
            s.flush()
            LOCAL_RUN_IDS.add(run.id)
    except SQLAlchemyError as exc:
        # The metrics above already tell the story; an unreachable database is why many
        # backups fail, so failing to record the attempt must not mask the real error.
        log.warning("could not record backup run in %s: %s", db.safe_url, exc)
