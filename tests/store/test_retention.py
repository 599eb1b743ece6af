"""Retention: what the cleanup removes and what it must keep, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from mobile_multimodal.store import AuditEvent, Database
from mobile_multimodal.store.retention import RetentionPolicy, backups_in, cleanup, prune_backups

DAY = 86400.0


def _file(path: Path, age_days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


def _backup(d: Path, stamp: str, age_days: float) -> Path:
    _file(d / f"mobile_mm-{stamp}.db.json", age_days)
    return _file(d / f"mobile_mm-{stamp}.db", age_days)


def _policy(tmp_path: Path, **overrides: float) -> RetentionPolicy:
    days = {"audit_days": 90.0, "log_days": 90.0, "profile_days": 90.0, "backup_days": 90.0, **overrides}
    return RetentionPolicy(
        **days, log_dir=tmp_path / "logs", profile_dir=tmp_path / "profiles", backup_dir=tmp_path / "bk"
    )


def test_cleanup_removes_only_what_is_past_retention(db: Database, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with db.session() as s:
        for age, name in ((100, "old"), (89, "recent")):
            s.add(
                AuditEvent(
                    timestamp=now - timedelta(days=age),
                    user_id=name,
                    action="a",
                    resource="r",
                    result="success",
                )
            )
    old_log = _file(tmp_path / "logs" / "application.log.3", 100)
    active_log = _file(tmp_path / "logs" / "application.log", 100)  # being written: never removed
    young_log = _file(tmp_path / "logs" / "application.log.1", 10)
    old_profile = _file(tmp_path / "profiles" / "cpu" / "p.svg", 40)
    newest = _backup(tmp_path / "bk", "20250101T000000Z", 200)  # the only backup: kept, however old

    report = cleanup(db, _policy(tmp_path, profile_days=30), now=now)

    assert report.counts == {"audit_events": 1, "log_files": 1, "profiles": 1, "backups": 0}
    assert not report.errors
    with db.session() as s:
        assert list(s.scalars(select(AuditEvent.user_id))) == ["recent"]
    assert not old_log.exists() and active_log.exists() and young_log.exists()
    assert not old_profile.exists()
    assert newest.exists()


def test_prune_keeps_the_newest_n_and_drops_old_ones_with_their_sidecars(tmp_path: Path) -> None:
    d = tmp_path / "bk"
    paths = [
        _backup(d, f"2026010{i}T000000Z", age) for i, age in ((1, 120), (2, 30), (3, 20), (4, 10), (5, 1))
    ]
    _file(d / "unrelated.txt", 500)  # not a backup: never touched

    removed = prune_backups(d, keep=3, max_age_days=90)

    assert sorted(removed) == sorted(paths[:2])  # beyond the newest 3 (one of them also too old)
    assert [p.name for p in backups_in(d)] == [p.name for p in reversed(paths[2:])]
    assert not (d / "mobile_mm-20260101T000000Z.db.json").exists()
    assert (d / "unrelated.txt").exists()
    assert prune_backups(d, keep=0, max_age_days=15) == [paths[2]]  # by age only: the 20-day one
