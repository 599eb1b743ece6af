"""``mobile-mm audit query``: read the audit trail from the database, filtered, newest last.

Filters: ``--user`` (exact), ``--action`` (exact, or a prefix ending in ``*``: ``auth.*``),
``--since`` (ISO 8601, or an age such as ``30m``, ``12h``, ``7d``), ``--result``, ``--limit``.
Reading the trail is itself a data access, so every query is audited (``audit.query``, with
its filters and the number of rows it returned).

Example::

    rows = query_events(db, user="alice", action="auth.*", since=parse_since("24h"))
    print(format_table(rows))
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mobile_multimodal.security.audit import AuditLog, event_fields
from mobile_multimodal.store import AuditEvent, Database

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``7d`` / ``12h`` / ``30m`` / ``90s`` ago, or an ISO 8601 time (UTC when it has no zone)."""
    text = value.strip()
    match = _AGE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"--since {value!r}: use an age such as 30m, 12h or 7d, or an ISO 8601 time such as "
            "2026-12-01T00:00:00Z"
        ) from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def query_events(
    db: Database,
    *,
    user: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    result: str | None = None,
    limit: int = 1000,
) -> list[AuditEvent]:
    """Matching events, oldest first; the newest ``limit`` when more match."""
    query = select(AuditEvent)
    if user is not None:
        query = query.where(AuditEvent.user_id == user)
    if action is not None:
        if action.endswith("*"):
            query = query.where(AuditEvent.action.startswith(action[:-1], autoescape=True))
        else:
            query = query.where(AuditEvent.action == action)
    if since is not None:
        query = query.where(AuditEvent.timestamp >= since)
    if result is not None:
        query = query.where(AuditEvent.result == result)
    query = query.order_by(AuditEvent.id.desc()).limit(limit)
    with db.session() as s:
        rows = list(s.scalars(query))
    return rows[::-1]


def format_table(rows: Sequence[AuditEvent]) -> str:
    if not rows:
        return "no audit events match"
    header = f"{'TIMESTAMP':<26} {'USER':<22} {'ACTION':<28} {'RESULT':<8} {'SOURCE_IP':<16} RESOURCE"
    lines = [header]
    for r in rows:
        stamp = r.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
        lines.append(
            f"{stamp:<26} {r.user_id[:22]:<22} {r.action[:28]:<28} {r.result:<8} "
            f"{(r.source_ip or '-')[:16]:<16} {r.resource}"
        )
    return "\n".join(lines)


def audit_query_command(
    db: Database,
    *,
    actor: str,
    user: str | None,
    action: str | None,
    since: str | None,
    result: str | None,
    limit: int,
    as_json: bool,
) -> str:
    """What the CLI prints; raises ValueError for a bad ``since``."""
    since_at = parse_since(since) if since else None
    rows = query_events(db, user=user, action=action, since=since_at, result=result, limit=limit)
    filters = {"user": user, "action": action, "since": since_at.isoformat() if since_at else None}
    AuditLog(db).record(
        user_id=actor,
        action="audit.query",
        resource="audit_events",
        result="success",
        details={"filters": {**filters, "result": result, "limit": limit}, "rows": len(rows)},
    )
    if as_json:
        return json.dumps([event_fields(r) for r in rows], indent=2)
    return format_table(rows)
