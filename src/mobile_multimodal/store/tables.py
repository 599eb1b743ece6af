"""The database schema: typed SQLAlchemy 2.x ORM classes.

Tables
------
- ``schema_version``: one row per applied schema version (see ``database.SCHEMA_VERSION``); the
  Alembic revisions in ``migrations/versions`` write it (and Alembic's own ``alembic_version``).
- ``users``: who keys belong to: the user id (the name keys, metrics and the audit trail use),
  the tier (free|pro) and when the user was first seen. ``mobile-mm users delete`` erases one.
- ``api_keys``: API keys, each belonging to a ``users`` row. Only the sha256 of the secret is
  stored, never the secret itself; ``prefix`` (the first characters of the key) lets operators
  tell keys apart in listings.
- ``audit_events``: the security audit trail, with exactly the operator's guide's fields:
  user identity (``user_id``), timestamp, action details (``action`` + ``details``),
  ``resource``, ``result`` (success|failure) and ``source_ip``.
- ``config_state``: a hash (and a secret-free snapshot) of the service settings at each start,
  so a start with different settings is recorded as a configuration change.
- ``backup_runs``: every backup attempt, so the server process (which scrapes metrics) learns
  about backups that ``mobile-mm db backup`` ran in another process.
- ``export_records``: every mobile export (CLI or ``POST /export``) with its outcome and
  manifest, so export history survives the short-lived process that ran it; ``POST /export``
  jobs are rows that move queued → running → succeeded|failed.

Example::

    from mobile_multimodal.store import Database, AuditEvent
    with Database("sqlite:///var/mm.db").session() as s:
        s.add(AuditEvent(user_id="alice", action="key.create", resource="api_keys/abc", result="success"))
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KEY_TYPES = ("free", "pro")
RESULTS = ("success", "failure")
EXPORT_STATES = ("queued", "running", "succeeded", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type and hands back naive datetimes; this stores UTC and always
    returns an aware value, so comparisons never mix naive and aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # probably a caller's bug (naive local time), so refuse rather than guess
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class SchemaVersion(Base):
    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"user_type IN {KEY_TYPES!r}", name="ck_users_user_type"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_type: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(f"key_type IN {KEY_TYPES!r}", name="ck_api_keys_key_type"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("users.id", name="fk_api_keys_user_id_users"), index=True
    )
    key_type: Mapped[str] = mapped_column(String(16))
    # Admin keys may call the admin routes; the tier (free|pro) still sets the rate limit.
    is_admin: Mapped[bool] = mapped_column(default=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint(f"result IN {RESULTS!r}", name="ck_audit_events_result"),
        Index("ix_audit_events_timestamp", "timestamp"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource: Mapped[str] = mapped_column(String(512))
    result: Mapped[str] = mapped_column(String(16))
    source_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ConfigState(Base):
    __tablename__ = "config_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    settings_hash: Mapped[str] = mapped_column(String(64))
    # Values of non-secret settings; secrets appear only as a short sha256 fingerprint.
    snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)


class BackupRun(Base):
    __tablename__ = "backup_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    ok: Mapped[bool] = mapped_column(default=False)
    path: Mapped[str | None] = mapped_column(Text, default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class ExportRecord(Base):
    __tablename__ = "export_records"
    __table_args__ = (
        CheckConstraint(f"status IN {EXPORT_STATES!r}", name="ck_export_records_status"),
        Index("ix_export_records_group", "host", "platform", "format", "quantization"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    quantization: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    duration_s: Mapped[float | None] = mapped_column(default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    # "cli:<os user>" or "api:<user id>/<key id>": who asked for it (the audit trail has the rest).
    requested_by: Mapped[str] = mapped_column(String(256))
    # The machine that ran it: the pushed history is per host (observability/pushgateway.py).
    host: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(Text)
    out_dir: Mapped[str] = mapped_column(Text)
