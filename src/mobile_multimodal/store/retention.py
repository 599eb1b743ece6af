"""Retention: remove what is older than the policy allows (audit rows, logs, profiles, backups).

``MOBILE_MM_RETENTION_DAYS`` (default 90) applies to every kind; ``MOBILE_MM_AUDIT_RETENTION_DAYS``,
``..._LOG_...``, ``..._PROFILE_...`` and ``..._BACKUP_RETENTION_DAYS`` override it for one kind.
What goes:

* ``audit_events`` rows whose timestamp is older than the audit retention;
* rotated log files (``application.log.3``: a name ending in a rotation number) older than the
  log retention, by modification time; the files being written are never touched;
* files under the profile directory older than the profile retention;
* backups (the file and its ``.json`` sidecar) older than the backup retention, or beyond the
  newest ``MOBILE_MM_BACKUP_KEEP``; the newest backup is always kept, however old.

The service runs :func:`cleanup` every ``MOBILE_MM_CLEANUP_INTERVAL_S`` and ``mobile-mm db
cleanup`` runs it by hand; both audit each run (``retention.cleanup`` with the counts).

Example::

    report = cleanup(db, RetentionPolicy.from_settings(get_settings()))
    print(report.counts)      # {"audit_events": 12, "log_files": 3, "profiles": 0, "backups": 1}
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete

from mobile_multimodal.settings import Settings
from mobile_multimodal.store.backup_verify import sidecar_path
from mobile_multimodal.store.database import Database
from mobile_multimodal.store.tables import AuditEvent

log = logging.getLogger(__name__)
DAY_S = 86400.0
_ROTATED_LOG = re.compile(r"^.+\.\d+$")  # application.log.1, audit.jsonl.12
_BACKUP = re.compile(r"^mobile_mm-\d{8}T\d{6}Z(?:-\d+)?\.(?:db|sql)$")


@dataclass(frozen=True)
class RetentionPolicy:
    """Days each kind is kept, and where the files are."""

    audit_days: float
    log_days: float
    profile_days: float
    backup_days: float
    log_dir: Path
    profile_dir: Path
    backup_dir: Path
    backup_keep: int = 0  # 0 = no count limit

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        days = settings.retention_days
        return cls(
            audit_days=settings.audit_retention_days or days,
            log_days=settings.log_retention_days or days,
            profile_days=settings.profile_retention_days or days,
            backup_days=settings.backup_retention_days or days,
            log_dir=settings.resolved_log_dir,
            profile_dir=settings.profile_dir,
            backup_dir=settings.resolved_backup_dir,
            backup_keep=settings.backup_keep,
        )

    def to_dict(self) -> dict[str, float | int]:
        return {
            "audit_days": self.audit_days,
            "log_days": self.log_days,
            "profile_days": self.profile_days,
            "backup_days": self.backup_days,
            "backup_keep": self.backup_keep,
        }


@dataclass
class CleanupReport:
    """How many of each kind one cleanup removed, and what it could not remove."""

    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _old_files(paths: list[Path], max_age_days: float, now: float) -> list[Path]:
    cutoff = now - max_age_days * DAY_S
    old = []
    for path in paths:
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                old.append(path)
        except OSError:  # gone meanwhile
            continue
    return old


def _remove(paths: list[Path], report: CleanupReport) -> int:
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.errors.append(f"cannot remove {path}: {exc.strerror}")
    return removed


def backups_in(backup_dir: Path) -> list[Path]:
    """The backup files ``db backup`` wrote in ``backup_dir``, newest first."""
    if not backup_dir.is_dir():
        return []
    found = [p for p in backup_dir.iterdir() if _BACKUP.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def prune_backups(
    backup_dir: Path, *, keep: int, max_age_days: float, now: float | None = None
) -> list[Path]:
    """Remove backups beyond the newest ``keep`` (0 = any number) or older than ``max_age_days``.

    The newest backup stays whatever its age: a cleanup must never leave no backup at all.
    Returns the backup files removed (each with its sidecar).
    """
    now = time.time() if now is None else now
    backups = backups_in(backup_dir)
    cutoff = now - max_age_days * DAY_S
    doomed = [
        p for i, p in enumerate(backups) if i > 0 and ((keep and i >= keep) or p.stat().st_mtime < cutoff)
    ]
    removed = []
    for path in doomed:
        try:
            path.unlink()
            sidecar_path(path).unlink(missing_ok=True)
            removed.append(path)
        except OSError as exc:
            log.warning("cannot prune backup %s: %s", path, exc.strerror)
    return removed


def cleanup(db: Database | None, policy: RetentionPolicy, *, now: datetime | None = None) -> CleanupReport:
    """Apply ``policy`` once; returns the counts (``db`` None: the files only)."""
    now = now or datetime.now(UTC)
    ts = now.timestamp()
    report = CleanupReport()
    if db is not None:
        cutoff = now - timedelta(days=policy.audit_days)
        with db.session() as s:
            result = s.execute(delete(AuditEvent).where(AuditEvent.timestamp < cutoff))
            report.counts["audit_events"] = int(getattr(result, "rowcount", 0) or 0)
    logs = (
        [p for p in policy.log_dir.glob("*") if _ROTATED_LOG.match(p.name)] if policy.log_dir.is_dir() else []
    )
    report.counts["log_files"] = _remove(_old_files(logs, policy.log_days, ts), report)
    profiles = list(policy.profile_dir.rglob("*")) if policy.profile_dir.is_dir() else []
    report.counts["profiles"] = _remove(_old_files(profiles, policy.profile_days, ts), report)
    pruned = prune_backups(
        policy.backup_dir, keep=policy.backup_keep, max_age_days=policy.backup_days, now=ts
    )
    report.counts["backups"] = len(pruned)
    return report
