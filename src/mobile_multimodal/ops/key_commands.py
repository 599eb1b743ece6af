"""What `mobile-mm keys ...` does; the CLI only parses options and prints the returned text.

Creation, revocation and listing are audited (``key.create``, ``key.revoke``, ``keys.list``)
with the operator's identity (:func:`~mobile_multimodal.ops.cli_actor.cli_actor`).

Example::

    print(keys_create(user="alice", key_type="pro", admin=False, as_json=True))
"""

from __future__ import annotations

import json
from datetime import datetime

from mobile_multimodal.ops.cli_actor import cli_actor
from mobile_multimodal.security.api_keys import create_key, list_keys, revoke_key
from mobile_multimodal.security.audit import AuditLog
from mobile_multimodal.store import ApiKey, Database


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def key_to_dict(record: ApiKey) -> dict[str, object]:
    """Public view of a key: never the secret, never its hash."""
    return {
        "id": record.id,
        "user_id": record.user_id,
        "key_type": record.key_type,
        "admin": record.is_admin,
        "prefix": record.prefix,
        "created_at": _iso(record.created_at),
        "revoked_at": _iso(record.revoked_at),
        "last_used_at": _iso(record.last_used_at),
    }


def keys_create(user: str, key_type: str, admin: bool, as_json: bool, db: Database | None = None) -> str:
    key, record = create_key(db or Database(), user, key_type, admin=admin, actor=cli_actor())
    if as_json:
        return json.dumps({**key_to_dict(record), "key": key}, indent=2)
    role = ", admin" if admin else ""
    return (
        f"created API key {record.id} for {record.user_id} ({record.key_type}{role})\n"
        f"{key}\n"
        "store it now: it is shown only once and cannot be recovered"
    )


def keys_list(include_revoked: bool, as_json: bool, db: Database | None = None) -> str:
    db = db or Database()
    records = list_keys(db, include_revoked=include_revoked)
    # who looked at the key inventory is a data access the trail keeps
    AuditLog(db).record(
        user_id=cli_actor(),
        action="keys.list",
        resource="api_keys",
        result="success",
        details={"include_revoked": include_revoked, "rows": len(records)},
    )
    if as_json:
        return json.dumps([key_to_dict(r) for r in records], indent=2)
    if not records:
        return "no API keys (create one with `mobile-mm keys create --user NAME`)"
    header = f"{'ID':<20} {'USER':<20} {'TYPE':<5} {'ADMIN':<5} {'PREFIX':<13} {'CREATED':<20} {'STATUS'}"
    lines = [header]
    for r in records:
        status = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
        lines.append(
            f"{r.id:<20} {r.user_id[:20]:<20} {r.key_type:<5} {'yes' if r.is_admin else 'no':<5} "
            f"{r.prefix + '…':<13} {r.created_at:%Y-%m-%d %H:%M:%S}  {status}"
        )
    return "\n".join(lines)


def keys_revoke(key_id: str, db: Database | None = None) -> str:
    record = revoke_key(db or Database(), key_id, actor=cli_actor())
    return f"revoked API key {record.id} of {record.user_id} at {record.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
