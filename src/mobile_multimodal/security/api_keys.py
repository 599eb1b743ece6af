"""API keys: create (the secret is shown once), list, revoke, look up.

A key is ``mmk_`` + 43 url-safe characters (32 random bytes from :mod:`secrets`). Only its
sha256 is stored: a leaked database does not leak usable keys, and lookup by hash means the
secret is never compared character by character. ``prefix`` (the first 12 characters) is kept
so operators can tell keys apart in ``mobile-mm keys list``.

Example::

    key, record = create_key(db, "alice", "pro")
    print(key)                         # give this to alice; it cannot be shown again
    assert lookup_key(db, key).id == record.id
    revoke_key(db, record.id)
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from sqlalchemy import select, update

from mobile_multimodal.security.audit import AuditLog
from mobile_multimodal.store import ApiKey, Database
from mobile_multimodal.store.tables import KEY_TYPES
from mobile_multimodal.store.users import ensure_user

KEY_PREFIX = "mmk_"
DISPLAY_PREFIX_CHARS = 12
# user_id becomes a metric label and an audit identity: keep it short and unambiguous.
_USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_KEY_RE = re.compile(r"^mmk_[A-Za-z0-9_-]{20,200}$")


class KeyNotFoundError(LookupError):
    """No API key has that id."""


def hash_key(key: str) -> str:
    """sha256 hex of the full key: what the database stores and looks up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def validate_user_id(user_id: str) -> str:
    if not _USER_ID_RE.match(user_id):
        raise ValueError(
            f"invalid user id {user_id!r}: use 1-128 characters from letters, digits and _ . @ -, "
            "starting with a letter or digit"
        )
    return user_id


def create_key(
    db: Database, user_id: str, key_type: str = "free", *, admin: bool = False, actor: str = "system"
) -> tuple[str, ApiKey]:
    """Create a key for ``user_id``; returns (the plaintext key, its stored record).

    ``key_type`` (free|pro) selects the rate limit; ``admin`` allows the admin routes. The
    creation is audited in the same transaction, attributed to ``actor``.
    """
    validate_user_id(user_id)
    if key_type not in KEY_TYPES:
        raise ValueError(f"invalid key type {key_type!r}: choose one of {', '.join(KEY_TYPES)}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id="k_" + secrets.token_hex(8),
        user_id=user_id,
        key_type=key_type,
        is_admin=admin,
        key_hash=hash_key(key),
        prefix=key[:DISPLAY_PREFIX_CHARS],
        created_at=datetime.now(UTC),
    )
    audit = AuditLog(db)
    with db.session() as s:
        ensure_user(s, user_id, key_type)  # keys belong to a users row (created on the first key)
        s.add(record)
        details = {"actor": actor, "key_type": key_type, "admin": admin, "user": user_id}
        audit.add(s, audit.make_event(actor, "key.create", f"api_keys/{record.id}", "success", None, details))
    return key, record


def list_keys(db: Database, *, include_revoked: bool = True, user_id: str | None = None) -> list[ApiKey]:
    """Keys, oldest first. Records hold the hash and prefix only; the secret is not recoverable."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    with db.session() as s:
        return list(s.scalars(query))


def revoke_key(db: Database, key_id: str, *, actor: str = "system") -> ApiKey:
    """Revoke a key (idempotent: revoking twice keeps the first time). Raises KeyNotFoundError."""
    audit = AuditLog(db)
    with db.session() as s:
        record = s.get(ApiKey, key_id)
        if record is None:
            raise KeyNotFoundError(f"no API key with id {key_id!r}; `mobile-mm keys list` shows the ids")
        already = record.revoked_at is not None
        if not already:
            record.revoked_at = datetime.now(UTC)
        details = {"actor": actor, "user": record.user_id, "already_revoked": already}
        audit.add(s, audit.make_event(actor, "key.revoke", f"api_keys/{key_id}", "success", None, details))
        return record


def lookup_key(db: Database, key: str) -> ApiKey | None:
    """The record for a plaintext key (revoked ones included), or None if unknown/malformed."""
    if not looks_like_key(key):
        return None
    with db.session() as s:
        return s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one_or_none()


def touch_key(db: Database, key_id: str, when: datetime | None = None) -> None:
    """Set ``last_used_at`` (callers throttle this: it is a write)."""
    with db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when or datetime.now(UTC)))
