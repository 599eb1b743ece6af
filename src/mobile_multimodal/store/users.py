"""Users: the people keys belong to; what we hold about one (export) and its erasure.

What the database holds about a user ``U``:

* the ``users`` row (id, tier, first seen) and ``U``'s API keys (id, tier, prefix, dates; the
  key hash is never shown, and the secret was never stored);
* audit rows where ``U`` is the identity, or the subject (``details.user``, e.g. ``key.create``
  by an operator; resource ``users/U``), or whose resource is one of ``U``'s keys, with their
  source IPs;
* export records ``U`` requested over the API (``requested_by = "api:U/<key id>"``).

:func:`erase_user` deletes the user and the keys, and anonymises the rest in one transaction:
``U`` becomes a random token (``erased:<16 hex>``, not derived from ``U``, so nothing maps it
back), the source IPs of ``U``'s own requests are cleared. The trail keeps its shape (what
happened, when, with which result) without saying who. Log files are not rewritten: they
expire under the retention policy (:mod:`.retention`).

Example::

    with db.session() as s:
        ensure_user(s, "alice", "pro")
    print(export_user(db, "alice")["api_keys"])
    report = erase_user(db, "alice")         # report.token replaces "alice" everywhere
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from mobile_multimodal.store.database import Database
from mobile_multimodal.store.tables import KEY_TYPES, ApiKey, AuditEvent, ExportRecord, User

API_ORIGIN = "api:"  # requested_by of exports asked for over HTTP: "api:<user>/<key id>"


class UserNotFoundError(LookupError):
    """No user, key or audit row names that user id."""


@dataclass(frozen=True)
class ErasureReport:
    """What :func:`erase_user` changed; holds the token only, never the erased user id."""

    token: str
    keys_deleted: int
    audit_events_anonymised: int
    exports_anonymised: int

    def counts(self) -> dict[str, int]:
        return {
            "keys_deleted": self.keys_deleted,
            "audit_events_anonymised": self.audit_events_anonymised,
            "exports_anonymised": self.exports_anonymised,
        }


def ensure_user(session: Session, user_id: str, user_type: str) -> User:
    """The ``users`` row for ``user_id``, created on first use; a pro key makes the user pro."""
    if user_type not in KEY_TYPES:
        raise ValueError(f"invalid user type {user_type!r}: choose one of {', '.join(KEY_TYPES)}")
    user = session.get(User, user_id)
    if user is None:
        user = User(id=user_id, user_type=user_type, created_at=datetime.now(UTC))
        session.add(user)
        session.flush()  # the key's foreign key needs the row before the key is inserted
    elif user_type == "pro" and user.user_type != "pro":
        user.user_type = "pro"
    return user


def _audit_filter(user_id: str, key_ids: list[str]) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = [
        AuditEvent.user_id == user_id,
        AuditEvent.details["user"].as_string() == user_id,
        AuditEvent.resource == f"users/{user_id}",  # user.export and other commands about the user
    ]
    if key_ids:
        clauses.append(AuditEvent.resource.in_([f"api_keys/{k}" for k in key_ids]))
    return or_(*clauses)


def _export_filter(user_id: str) -> ColumnElement[bool]:
    # "_" and "%" are LIKE wildcards and legal in user ids: escape them.
    escaped = user_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return ExportRecord.requested_by.like(f"{API_ORIGIN}{escaped}/%", escape="\\")


def _not_found(user_id: str) -> UserNotFoundError:
    return UserNotFoundError(f"no user {user_id!r} in the database (`mobile-mm keys list` shows the users)")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def export_user(db: Database, user_id: str) -> dict[str, Any]:
    """Everything the database holds about ``user_id``, as JSON-ready data.

    Raises :class:`UserNotFoundError` when nothing at all names the user.
    """
    with db.session() as s:
        user = s.get(User, user_id)
        keys = list(s.scalars(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at)))
        key_ids = [k.id for k in keys]
        events = list(
            s.scalars(select(AuditEvent).where(_audit_filter(user_id, key_ids)).order_by(AuditEvent.id))
        )
        exports = list(
            s.scalars(select(ExportRecord).where(_export_filter(user_id)).order_by(ExportRecord.created_at))
        )
    if user is None and not keys and not events and not exports:
        raise _not_found(user_id)
    return {
        "user_id": user_id,
        "exported_at": datetime.now(UTC).isoformat(),
        "user": (
            {"id": user.id, "user_type": user.user_type, "created_at": _iso(user.created_at)}
            if user
            else None
        ),
        "api_keys": [
            {
                "id": k.id,
                "key_type": k.key_type,
                "admin": k.is_admin,
                "prefix": k.prefix,
                "created_at": _iso(k.created_at),
                "revoked_at": _iso(k.revoked_at),
                "last_used_at": _iso(k.last_used_at),
            }
            for k in keys
        ],
        "audit_events": [
            {
                "id": e.id,
                "timestamp": _iso(e.timestamp),
                "user_id": e.user_id,
                "action": e.action,
                "resource": e.resource,
                "result": e.result,
                "source_ip": e.source_ip,
                "details": e.details,
            }
            for e in events
        ],
        "exports": [
            {
                "id": r.id,
                "status": r.status,
                "platform": r.platform,
                "format": r.format,
                "quantization": r.quantization,
                "created_at": _iso(r.created_at),
                "requested_by": r.requested_by,
            }
            for r in exports
        ],
    }


def _scrub(value: Any, user_id: str, token: str) -> Any:
    """``value`` with every string equal to ``user_id`` (at any depth) replaced by ``token``."""
    if isinstance(value, str):
        return token if value == user_id else value
    if isinstance(value, dict):
        return {k: _scrub(v, user_id, token) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, user_id, token) for v in value]
    return value


def erase_user(db: Database, user_id: str) -> ErasureReport:
    """Delete ``user_id``'s row and keys and anonymise its audit and export rows, atomically.

    Raises :class:`UserNotFoundError` when nothing names the user (nothing is changed).
    """
    token = "erased:" + secrets.token_hex(8)
    with db.session() as s:
        user = s.get(User, user_id)
        key_ids = list(s.scalars(select(ApiKey.id).where(ApiKey.user_id == user_id)))
        events = list(s.scalars(select(AuditEvent).where(_audit_filter(user_id, key_ids))))
        exports = list(s.scalars(select(ExportRecord).where(_export_filter(user_id))))
        if user is None and not key_ids and not events and not exports:
            raise _not_found(user_id)
        for event in events:
            if event.user_id == user_id:
                event.user_id = token
                event.source_ip = None  # the address this user's own requests came from
            event.details = _scrub(dict(event.details), user_id, token)
            if event.resource == f"users/{user_id}":
                event.resource = f"users/{token}"
        for record in exports:
            record.requested_by = f"{API_ORIGIN}{token}"
        s.execute(delete(ApiKey).where(ApiKey.user_id == user_id))
        if user is not None:
            s.delete(user)
    return ErasureReport(token, len(key_ids), len(events), len(exports))
