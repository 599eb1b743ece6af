"""Persistence: SQLAlchemy models and sessions (SQLite default, PostgreSQL by URL), Alembic
migrations, backups, users, retention.

Example::

    from mobile_multimodal.store import Database, backup, verify
    db = Database()                      # MOBILE_MM_DATABASE_URL, else SQLite in the data dir
    latency_s = db.ping()
    path = backup(db, Path("var/backups"))
    assert verify(path).ok
"""

from mobile_multimodal.store.backup import BackupError, backup, restore
from mobile_multimodal.store.backup_metrics import BackupMetricsSync
from mobile_multimodal.store.backup_verify import VerifyResult, verify
from mobile_multimodal.store.database import (
    DATABASE_DOWN,
    DATABASE_RETRY_AFTER_S,
    SCHEMA_VERSION,
    Database,
    DatabaseError,
)
from mobile_multimodal.store.tables import (
    ApiKey,
    AuditEvent,
    BackupRun,
    Base,
    ConfigState,
    ExportRecord,
    SchemaVersion,
    User,
)

__all__ = [
    "DATABASE_DOWN",
    "DATABASE_RETRY_AFTER_S",
    "SCHEMA_VERSION",
    "ApiKey",
    "AuditEvent",
    "BackupError",
    "BackupMetricsSync",
    "BackupRun",
    "Base",
    "ConfigState",
    "Database",
    "DatabaseError",
    "ExportRecord",
    "SchemaVersion",
    "User",
    "VerifyResult",
    "backup",
    "restore",
    "verify",
]
