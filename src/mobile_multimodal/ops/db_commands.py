"""What `mobile-mm db ...` does: backup, verify, restore, migrations and the retention cleanup.

Every command that changes the database or its backups is audited (``db.backup``,
``db.restore``, ``db.upgrade``, ``db.downgrade``, ``retention.cleanup``) with the operator's
identity (``cli:<os user>``). Each function returns (text to print, success).

Example::

    text, ok = db_backup(Path("var/backups"), as_json=False)
    text, ok = db_verify(Path("var/backups/mobile_mm-20250101T020000Z.db"), as_json=True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobile_multimodal.ops.cli_actor import cli_actor
from mobile_multimodal.security.audit import AuditLog
from mobile_multimodal.settings import get_settings
from mobile_multimodal.store import migrate
from mobile_multimodal.store.backup import BackupError, backup, restore
from mobile_multimodal.store.backup_verify import VerifyResult, verify
from mobile_multimodal.store.database import SCHEMA_VERSION, Database, DatabaseError
from mobile_multimodal.store.restore_check import RestoreCheck, restore_check
from mobile_multimodal.store.retention import RetentionPolicy, cleanup, prune_backups


def _format_verify(result: VerifyResult) -> str:
    lines = [
        f"{'OK' if result.ok else 'FAILED'}  {result.path}",
        f"  format         {result.format}",
        f"  integrity      {result.integrity}",
        f"  sha256         {result.sha256}"
        + (
            "" if result.sha256_expected in (None, result.sha256) else f" (sidecar: {result.sha256_expected})"
        ),
        f"  size           {result.size_bytes} bytes",
        f"  schema version {result.schema_version}",
        "  rows           " + ", ".join(f"{t}={n}" for t, n in sorted(result.row_counts.items())),
    ]
    lines += [f"  error: {e}" for e in result.errors]
    return "\n".join(lines)


def _format_restore_check(check: RestoreCheck) -> str:
    if check.ok:
        return (
            f"  restore check  OK: restored into {check.target}, {len(check.row_counts)} tables' rows match"
        )
    return "\n".join(
        ["  restore check  FAILED" + (f" ({check.target})" if check.target else "")]
        + [f"  error: {e}" for e in check.errors]
    )


def _fail(message: str, as_json: bool) -> tuple[str, bool]:
    return (json.dumps({"ok": False, "error": message}) if as_json else message), False


def _open(db: Database | None, *, migrate_schema: bool = True) -> Database:
    return db if db is not None else Database(create_schema=migrate_schema)


def db_backup(out: Path | None, as_json: bool, db: Database | None = None) -> tuple[str, bool]:
    """Back up the configured database, verify the copy, prune old backups."""
    try:
        db = _open(db)
    except DatabaseError as exc:
        return _fail(f"backup failed: {exc}", as_json)
    settings = get_settings()
    dest = out if out is not None else settings.resolved_backup_dir
    audit = AuditLog(db)
    try:
        path = backup(db, dest)
    except BackupError as exc:
        audit.record(
            user_id=cli_actor(),
            action="db.backup",
            resource=db.safe_url,
            result="failure",
            details={"error": str(exc), "dest": str(dest)},
        )
        return _fail(f"backup failed: {exc}", as_json)
    policy = RetentionPolicy.from_settings(settings)
    pruned = prune_backups(dest, keep=policy.backup_keep, max_age_days=policy.backup_days)
    result = verify(path)
    audit.record(
        user_id=cli_actor(),
        action="db.backup",
        resource=db.safe_url,
        result="success",
        details={"path": str(path), "sha256": result.sha256, "pruned": [p.name for p in pruned]},
    )
    if as_json:
        return json.dumps({**result.to_dict(), "pruned": [str(p) for p in pruned]}, indent=2), True
    pruned_text = f"\npruned {len(pruned)} old backup(s)" if pruned else ""
    return "backup written and verified\n" + _format_verify(result) + pruned_text, True


def db_verify(path: Path, as_json: bool, restore_into_scratch: bool = True) -> tuple[str, bool]:
    """Verify a backup file and (by default) restore it into a scratch database."""
    result = verify(path)
    check: RestoreCheck | None = None
    if restore_into_scratch and result.ok:
        server: Database | None = None
        if result.format == "pg_dump":
            try:
                server = Database(create_schema=False)
            except DatabaseError as exc:
                check = RestoreCheck(
                    False, "", errors=[f"no PostgreSQL server for the scratch restore: {exc}"]
                )
        try:
            check = check or restore_check(path, server)
        finally:
            if server is not None:
                server.dispose()
    ok = result.ok and (check is None or check.ok)
    if as_json:
        body: dict[str, Any] = {**result.to_dict(), "ok": ok}
        if check is not None:
            body["restore_check"] = check.to_dict()
        return json.dumps(body, indent=2), ok
    text = _format_verify(result) + (("\n" + _format_restore_check(check)) if check is not None else "")
    return text, ok


def db_restore(path: Path, as_json: bool, db: Database | None = None) -> tuple[str, bool]:
    """Replace the configured database's contents with a verified backup, then migrate it."""
    try:
        db = _open(db, migrate_schema=False)
    except DatabaseError as exc:
        return _fail(f"restore failed: {exc}", as_json)
    audit = AuditLog(db)
    try:
        result = restore(path, db)
        revision = db.upgrade()  # a backup from an older release is brought to this schema
    except (BackupError, DatabaseError) as exc:
        audit.record(
            user_id=cli_actor(),
            action="db.restore",
            resource=db.safe_url,
            result="failure",
            details={"path": str(path), "error": str(exc)},
        )
        return _fail(f"restore failed: {exc}", as_json)
    audit.record(
        user_id=cli_actor(),
        action="db.restore",
        resource=db.safe_url,
        result="success",
        details={"path": str(path), "sha256": result.sha256, "revision": revision},
    )
    if as_json:
        return json.dumps(
            {"ok": True, "path": str(path), "revision": revision, "rows": result.row_counts}
        ), True
    rows = ", ".join(f"{t}={n}" for t, n in sorted(result.row_counts.items()))
    return f"restored {path} into {db.safe_url} (schema {revision})\n  rows {rows}", True


def _migration(step: str, target: str) -> tuple[str, bool]:
    try:
        db = Database(create_schema=False)
    except DatabaseError as exc:
        return f"error: {exc}", False
    try:
        before = db.current_revision()
        after = db.upgrade(target) if step == "upgrade" else db.downgrade(target)
    except DatabaseError as exc:
        return f"error: {exc}", False
    finally:
        db.dispose()
    AuditLog(db).record(
        user_id=cli_actor(),
        action=f"db.{step}",
        resource=db.safe_url,
        result="success",
        details={"from": before, "to": after},
    )
    if before == after:
        return f"{db.safe_url} is already at {after}", True
    return f"{db.safe_url}: {before or 'empty'} -> {after or 'empty'}", True


def db_upgrade(target: str = "head") -> tuple[str, bool]:
    """Apply the schema revisions up to ``target`` (the service does this at start too)."""
    return _migration("upgrade", target)


def db_downgrade(target: str) -> tuple[str, bool]:
    """Revert the schema to ``target`` (a revision, ``-1``, or ``base``)."""
    return _migration("downgrade", target)


def db_current() -> tuple[str, bool]:
    """The database's schema revision and this release's newest."""
    try:
        with Database(create_schema=False) as db:
            current = db.current_revision()
            url = db.safe_url
    except DatabaseError as exc:
        return f"error: {exc}", False
    head = migrate.head()
    state = "up to date" if current == head else f"behind: run `mobile-mm db upgrade` to reach {head}"
    if current is not None and current not in migrate.revisions():
        state = "written by a newer release"
    return f"{url}: {current or 'empty (never migrated)'} ({state}; schema v{SCHEMA_VERSION} is {head})", True


def db_cleanup(as_json: bool, db: Database | None = None) -> tuple[str, bool]:
    """Apply the retention policy once (as the service does daily); audited with the counts."""
    try:
        db = _open(db)
    except DatabaseError as exc:
        return _fail(f"cleanup failed: {exc}", as_json)
    policy = RetentionPolicy.from_settings(get_settings())
    report = cleanup(db, policy)
    AuditLog(db).record(
        user_id=cli_actor(),
        action="retention.cleanup",
        resource="retention",
        result="failure" if report.errors else "success",
        details={"removed": report.counts, "policy": policy.to_dict(), "errors": report.errors},
    )
    if as_json:
        return json.dumps({"ok": not report.errors, "removed": report.counts, "errors": report.errors}), True
    lines = ["removed " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in report.counts.items())]
    lines += [f"error: {e}" for e in report.errors]
    return "\n".join(lines), not report.errors
