"""What `mobile-mm db ...` does; the CLI only parses options and prints the returned text.

Backups are audited (``db.backup``) like any other security-relevant operation.

Example::

    text, ok = db_backup(Path("var/backups"), as_json=False)
"""

from __future__ import annotations

import json
from pathlib import Path

from mobile_multimodal.store.backup import BackupError, backup
from mobile_multimodal.store.database import Database, DatabaseError
from mobile_multimodal.store.verify import VerifyResult, verify


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


def db_backup(out: Path | None, as_json: bool, db: Database | None = None) -> tuple[str, bool]:
    """Back up the configured database; returns (text to print, success)."""
    from mobile_multimodal.security.audit import AuditLog
    from mobile_multimodal.security.commands import cli_actor
    from mobile_multimodal.settings import get_settings

    try:
        db = db or Database()
    except DatabaseError as exc:
        return (json.dumps({"ok": False, "error": str(exc)}) if as_json else f"backup failed: {exc}"), False
    dest = out if out is not None else get_settings().resolved_backup_dir
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
        return (json.dumps({"ok": False, "error": str(exc)}) if as_json else f"backup failed: {exc}"), False
    result = verify(path)
    audit.record(
        user_id=cli_actor(),
        action="db.backup",
        resource=db.safe_url,
        result="success",
        details={"path": str(path), "sha256": result.sha256},
    )
    if as_json:
        return json.dumps(result.to_dict(), indent=2), True
    return "backup written and verified\n" + _format_verify(result), True


def db_verify(path: Path, as_json: bool) -> tuple[str, bool]:
    """Verify a backup file; returns (text to print, success)."""
    result = verify(path)
    return (json.dumps(result.to_dict(), indent=2) if as_json else _format_verify(result)), result.ok
