"""The audit trail's own file: one JSON line per event in ``<log dir>/audit.jsonl``, rotated.

Besides the database rows and the application log, every audit event is appended here with the
guide's fields (``timestamp``, ``user_id``, ``action``, ``resource``, ``result``, ``source_ip``,
``details``). A file of its own can be shipped, retained and access-controlled apart from the
chatty application log (SOC 2 auditors ask for exactly that), and it survives a database outage.
It rotates like the application log: at ``MOBILE_MM_AUDIT_LOG_MAX_BYTES`` or every
``MOBILE_MM_AUDIT_LOG_ROTATE_HOURS``, keeping ``MOBILE_MM_AUDIT_LOG_BACKUP_COUNT`` old files
(``audit.jsonl.1`` is the newest).

One file per process: the service configures it at start (``install_security``) and the CLI at
each command, from the settings; :class:`~mobile_multimodal.security.audit.AuditLog` writes every
event it records to whichever file is configured (none: the database and the log only). A write
that fails (a full disk) is logged, never raised: the event is still in the database and the log.

Example::

    configure_audit_file(AuditFile(settings.resolved_log_dir / AUDIT_FILE_NAME))
    AuditLog(db).record(user_id="alice", action="key.revoke", ...)   # -> a line in audit.jsonl
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from mobile_multimodal.observability.logging import SizeAndTimeRotatingFileHandler, redact
from mobile_multimodal.settings import Settings

AUDIT_FILE_NAME = "audit.jsonl"
log = logging.getLogger(__name__)


class AuditFile:
    """An append-only, rotated JSON-lines file; thread-safe (the handler holds a lock)."""

    def __init__(
        self, path: Path, max_bytes: int = 50 * 2**20, backup_count: int = 10, rotate_hours: float = 24.0
    ) -> None:
        self.path = path
        self._rotation = (max_bytes, backup_count, rotate_hours * 3600)
        self._handler: SizeAndTimeRotatingFileHandler | None = None  # opened at the first event
        self._open_lock = threading.Lock()

    def _opened(self) -> SizeAndTimeRotatingFileHandler:
        with self._open_lock:
            if self._handler is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handler = SizeAndTimeRotatingFileHandler(self.path, *self._rotation)
                handler.setFormatter(logging.Formatter("%(message)s"))
                self._handler = handler
            return self._handler

    @classmethod
    def for_settings(cls, settings: Settings) -> AuditFile:
        return cls(
            settings.resolved_log_dir / AUDIT_FILE_NAME,
            settings.audit_log_max_bytes,
            settings.audit_log_backup_count,
            settings.audit_log_rotate_hours,
        )

    def write(self, event: dict[str, Any]) -> None:
        # redacted like the application log: a key pasted into a resource never reaches the file
        line = json.dumps(redact(event), sort_keys=True, default=str, ensure_ascii=False)
        record = logging.makeLogRecord({"msg": line, "levelno": logging.INFO})
        try:
            handler = self._opened()
            handler.handle(record)
            handler.flush()
        except OSError as exc:  # the database row and the log line still carry the event
            log.error("audit event not written to %s: %s", self.path, exc)

    def close(self) -> None:
        with self._open_lock:
            if self._handler is not None:
                self._handler.close()
                self._handler = None


_lock = threading.Lock()
_current: AuditFile | None = None


def configure_audit_file(audit_file: AuditFile | None) -> AuditFile | None:
    """Make ``audit_file`` this process's audit file (None: no file); returns the previous one,
    closed unless it is the same file."""
    global _current
    with _lock:
        previous, _current = _current, audit_file
    if previous is not None and previous is not audit_file:
        previous.close()
    return previous


def configure_from_settings(settings: Settings) -> AuditFile | None:
    """The file the settings name, made current (reused when it is already that path)."""
    current = current_audit_file()
    if current is not None and current.path == settings.resolved_log_dir / AUDIT_FILE_NAME:
        return current
    try:
        audit_file = AuditFile.for_settings(settings)
    except OSError as exc:  # (nothing is opened before the first event; kept for safety)
        log.error("no audit file in %s: %s", settings.resolved_log_dir, exc)
        return None
    configure_audit_file(audit_file)
    return audit_file


def current_audit_file() -> AuditFile | None:
    return _current
