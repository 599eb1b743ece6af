"""Keep the serving process's backup metrics true, whoever ran the backup.

``mobile-mm db backup`` (cron, an operator) runs in its own short-lived process, whose metrics
nobody scrapes. Every attempt is a ``backup_runs`` row, so the server reads them back:
``backup_last_success_timestamp_seconds`` becomes the newest successful run's finish time and
``backup_failures_total`` grows by the failed runs recorded since the server started (older
failures are history: counting them at start would look like a fresh burst to ``increase()``).
Optionally the server also runs backups itself every ``backup_interval_s`` (and prunes old
ones as :mod:`.retention` says).

Example (in the app's lifespan)::

    sync = BackupMetricsSync(db)
    task = asyncio.create_task(sync.run_forever(interval_s=60))
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.observability import metrics
from mobile_multimodal.store.backup import LOCAL_RUN_IDS, BackupError, backup
from mobile_multimodal.store.database import Database
from mobile_multimodal.store.retention import RetentionPolicy, prune_backups
from mobile_multimodal.store.tables import BackupRun

log = logging.getLogger(__name__)
FAILED_BACKUP_RETRY_S = 600.0


class BackupMetricsSync:
    """Mirror ``backup_runs`` into this process's backup metrics; see the module docstring."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._seen_id: int | None = None  # highest backup_runs.id already accounted for
        self._retry_at = 0.0  # wall clock before which a failed scheduled backup is not retried

    def sync(self) -> None:
        """One pass: update the gauge and count new failures. Raises on database errors."""
        with self.db.session() as s:
            last_ok = s.scalar(select(func.max(BackupRun.finished_at)).where(BackupRun.ok.is_(True)))
            if self._seen_id is None:
                self._seen_id = s.scalar(select(func.max(BackupRun.id))) or 0
                new_failures: list[int] = []
            else:
                failed = select(BackupRun.id).where(BackupRun.id > self._seen_id, BackupRun.ok.is_(False))
                new_failures = list(s.scalars(failed))
                self._seen_id = s.scalar(select(func.max(BackupRun.id))) or self._seen_id
        if last_ok is not None:
            # max, so a backup this process just timed with time.time() is never moved back
            current = next(iter(metrics.BACKUP_LAST_SUCCESS.collect())).samples[0].value
            metrics.BACKUP_LAST_SUCCESS.set(max(current, last_ok.timestamp()))
        for run_id in new_failures:
            if run_id not in LOCAL_RUN_IDS:  # backup() in this process already counted it
                metrics.BACKUP_FAILURES.inc()

    async def run_forever(
        self,
        interval_s: float,
        *,
        backup_dir: Path | None = None,
        backup_interval_s: float = 0.0,
        retention: RetentionPolicy | None = None,
    ) -> None:
        """Sync every ``interval_s``; with ``backup_interval_s > 0`` also back up into ``backup_dir``
        whenever the newest successful backup (by anyone) is that old or there is none, so a fresh
        deployment backs up at once; then prune old backups by ``retention``."""
        if backup_interval_s > 0 and backup_dir is None:
            raise ValueError("backup_interval_s > 0 needs a backup_dir")
        while True:
            try:
                await asyncio.to_thread(self.sync)
            except SQLAlchemyError as exc:
                log.warning("backup metrics sync failed: %s", exc)
            if backup_interval_s > 0 and backup_dir is not None and self._backup_due(backup_interval_s):
                await self._scheduled_backup(backup_dir, retention)
            await asyncio.sleep(interval_s)

    def _backup_due(self, backup_interval_s: float) -> bool:
        last = next(iter(metrics.BACKUP_LAST_SUCCESS.collect())).samples[0].value
        return time.time() >= max(last + backup_interval_s, self._retry_at)

    async def _scheduled_backup(self, backup_dir: Path, retention: RetentionPolicy | None) -> None:
        try:
            path = await asyncio.to_thread(backup, self.db, backup_dir)
        except BackupError as exc:
            # backup() counted the failure; retry later, not at every sync pass
            self._retry_at = time.time() + FAILED_BACKUP_RETRY_S
            log.error("scheduled backup failed: %s", exc)
            return
        log.info("scheduled backup written to %s", path)
        if retention is not None:
            keep, days = retention.backup_keep, retention.backup_days
            pruned = await asyncio.to_thread(prune_backups, backup_dir, keep=keep, max_age_days=days)
            if pruned:
                log.info("pruned %d old backup(s)", len(pruned))
