"""Shared checks for the audit trail tests: every event carries every field the guide names
(user identity, timestamp, action, resource, result, source IP), in the database row and in the
line of ``<log dir>/audit.jsonl``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mobile_multimodal.store import AuditEvent, Database

GUIDE_FIELDS = ("user_id", "timestamp", "action", "resource", "result", "source_ip")


def rows(db: Database, action: str) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def file_lines(log_dir: Path, action: str) -> list[dict[str, Any]]:
    path = log_dir / "audit.jsonl"
    if not path.is_file():
        return []
    return [line for line in map(json.loads, path.read_text().splitlines()) if line["action"] == action]


def assert_guide_fields(row: AuditEvent, line: dict[str, Any] | None = None) -> None:
    """Every guide field present and non-empty in the row; the file's line says the same."""
    for name in GUIDE_FIELDS:
        value = getattr(row, name)
        assert value not in (None, ""), f"{row.action}: {name} is empty"
    assert isinstance(row.timestamp, datetime) and row.timestamp.tzinfo is not None
    assert row.result in ("success", "failure")
    if line is not None:
        for name in GUIDE_FIELDS:
            assert line[name] not in (None, ""), f"{row.action} in audit.jsonl: {name} is empty"
        assert (line["user_id"], line["action"], line["resource"], line["result"], line["source_ip"]) == (
            row.user_id,
            row.action,
            row.resource,
            row.result,
            row.source_ip,
        )
        assert datetime.fromisoformat(line["timestamp"]) == row.timestamp
