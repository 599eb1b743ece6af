"""The server's scheduled backups: due at once when no recent backup exists, then pruned."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sqlalchemy import select

from mobile_multimodal.observability import metrics
from mobile_multimodal.store import BackupMetricsSync, BackupRun, Database
from mobile_multimodal.store.retention import RetentionPolicy, backups_in

WAIT_S = 120.0  # only a failure waits this long


def _old_backup(d: Path, stamp: str, age_days: float) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    when = time.time() - age_days * 86400
    for path in (d / f"mobile_mm-{stamp}.db", d / f"mobile_mm-{stamp}.db.json"):
        path.write_text("{}")
        os.utime(path, (when, when))
    return d / f"mobile_mm-{stamp}.db"


def test_a_fresh_deployment_backs_up_at_once_and_prunes(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    old = [_old_backup(backups, f"2025010{i}T000000Z", 10 - i) for i in (1, 2)]
    policy = RetentionPolicy(90, 90, 90, 90, tmp_path / "logs", tmp_path / "profiles", backups, backup_keep=2)
    metrics.BACKUP_LAST_SUCCESS.set(0)  # this process has never seen a backup: one is due now

    async def run() -> None:
        sync = BackupMetricsSync(db)
        task = asyncio.create_task(
            sync.run_forever(0.05, backup_dir=backups, backup_interval_s=3600, retention=policy)
        )
        deadline = time.monotonic() + WAIT_S
        while not any(p not in old for p in backups_in(backups)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # one more pass: the backup is not due again for an hour
        await asyncio.sleep(0.2)
        task.cancel()

    with Database(f"sqlite:///{tmp_path / 'mm.db'}") as db:
        asyncio.run(run())
        with db.session() as s:
            runs = list(s.scalars(select(BackupRun)))
    assert [r.ok for r in runs] == [True]  # exactly one backup, not one per sync pass
    kept = backups_in(backups)
    assert len(kept) == 2 and kept[0].name == Path(str(runs[0].path)).name and kept[1] == old[1]
    assert not old[0].exists()  # beyond the newest 2: pruned with its sidecar
