"""The service's scheduled retention cleanup: runs at start, removes old rows, audits itself."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from mobile_multimodal.security import AuditLog
from mobile_multimodal.serving.retention_cleanup import run_retention_cleanup
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import AuditEvent, Database

WAIT_S = 120.0  # only a failure waits this long


def _audit(db: Database, action: str) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_cleanup_runs_at_start_and_records_its_counts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, profile_dir=tmp_path / "profiles", retention_days=30)
    with Database(f"sqlite:///{tmp_path / 'mm.db'}") as db:
        with db.session() as s:
            old = datetime.now(UTC) - timedelta(days=31)
            s.add(AuditEvent(timestamp=old, user_id="u", action="old", resource="r", result="success"))

        async def run() -> None:
            task = asyncio.create_task(run_retention_cleanup(db, settings, AuditLog(db), lambda: True))
            deadline = time.monotonic() + WAIT_S
            while not _audit(db, "retention.cleanup") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()

        asyncio.run(run())
        (row,) = _audit(db, "retention.cleanup")
        assert _audit(db, "old") == []
    assert (row.user_id, row.result) == ("system", "success")
    assert row.details["removed"] == {"audit_events": 1, "log_files": 0, "profiles": 0, "backups": 0}
    assert row.details["policy"]["audit_days"] == 30


def test_a_follower_worker_does_not_clean(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, profile_dir=tmp_path / "profiles", cleanup_interval_s=0.05)
    with Database(f"sqlite:///{tmp_path / 'mm.db'}") as db:
        calls = []

        def follower() -> bool:
            calls.append(1)
            return False

        async def run() -> None:
            task = asyncio.create_task(run_retention_cleanup(db, settings, AuditLog(db), follower))
            deadline = time.monotonic() + WAIT_S
            while len(calls) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()

        asyncio.run(run())
        assert len(calls) >= 3 and _audit(db, "retention.cleanup") == []
