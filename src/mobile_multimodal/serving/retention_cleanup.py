"""The service's scheduled retention cleanup: one audited run at start, then every interval.

Each run applies :class:`~mobile_multimodal.store.retention.RetentionPolicy` (audit rows,
rotated logs, profiles, backups past ``MOBILE_MM_RETENTION_DAYS``) and writes one
``retention.cleanup`` audit row with the counts it removed (``failure`` when a file could not be
removed). ``mobile-mm db cleanup`` runs the same cleanup by hand (ops/db_commands.py).

Example (in the app's background duties)::

    asyncio.create_task(run_retention_cleanup(db, settings, audit, leader.is_leader))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.security import AuditLog
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database
from mobile_multimodal.store.retention import CleanupReport, RetentionPolicy, cleanup

log = logging.getLogger(__name__)


def audited_cleanup(database: Database, policy: RetentionPolicy, audit: AuditLog) -> CleanupReport:
    """One cleanup and its audit row (attributed to ``system``)."""
    report = cleanup(database, policy)
    audit.record(
        user_id="system",
        action="retention.cleanup",
        resource="retention",
        result="failure" if report.errors else "success",
        details={"removed": report.counts, "policy": policy.to_dict(), "errors": report.errors},
    )
    return report


async def run_retention_cleanup(
    database: Database, settings: Settings, audit: AuditLog, is_leader: Callable[[], bool]
) -> None:
    """Clean up at once, then every ``settings.cleanup_interval_s``; only the leader worker does."""
    policy = RetentionPolicy.from_settings(settings)
    while True:
        if is_leader():  # one worker cleans; the others would find nothing left
            try:
                report = await asyncio.to_thread(audited_cleanup, database, policy, audit)
                log.info("retention cleanup removed %s", report.counts)
            except SQLAlchemyError as exc:
                log.error("retention cleanup failed: %s", exc)
        await asyncio.sleep(settings.cleanup_interval_s)
