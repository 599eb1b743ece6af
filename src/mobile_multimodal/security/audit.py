"""The security audit trail: a database row and a JSON log line per security-relevant event.

Each event carries the operator's guide's fields: user identity (``user_id``), timestamp,
action details (``action`` + ``details``), ``resource``, ``result`` (success|failure) and
``source_ip`` (the client's address for HTTP events; ``local`` for the CLI's and the service's
own events, which no network client caused). Rows go to ``audit_events``; the same fields go to the
``mobile_multimodal.audit`` logger as ``extra`` attributes, which the JSON log formatter writes
out (and Promtail ships to Loki), and to the audit file (audit_file.py, ``audit.jsonl``), so the
trail survives even if the database write fails.

``EventType`` is the bounded label set of ``security_events_total{event_type}``.

Example::

    audit = AuditLog(db)
    audit.record(user_id="alice", action="key.revoke", resource="api_keys/k_1a2b", result="success",
                 source_ip="10.0.0.7", details={"actor": "cli:root"})
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mobile_multimodal.observability import metrics
from mobile_multimodal.security.audit_file import current_audit_file
from mobile_multimodal.store import AuditEvent, Database

AUDIT_LOGGER = "mobile_multimodal.audit"
# The source of an event no network client caused: the CLI, the service's own loops.
LOCAL_SOURCE = "local"
Result = Literal["success", "failure"]
log = logging.getLogger(__name__)


class EventType(StrEnum):
    """The guide's security event kinds (``security_events_total{event_type}``)."""

    AUTHENTICATION_FAILURE = "authentication_failure"
    UNAUTHORIZED = "unauthorized"
    ANOMALOUS_REQUEST = "anomalous_request"
    RATE_LIMITED = "rate_limited"
    MODEL_TAMPERING = "model_tampering"
    CONFIG_CHANGE = "config_change"


def count_security_event(event_type: EventType) -> None:
    metrics.SECURITY_EVENTS.labels(event_type.value).inc()


class AuditLog:
    """Writes audit events to the database (best effort) and always to the audit logger."""

    def __init__(self, db: Database | None, logger: logging.Logger | None = None) -> None:
        self.db = db
        self.logger = logger or logging.getLogger(AUDIT_LOGGER)

    def record(
        self,
        *,
        user_id: str,
        action: str,
        resource: str,
        result: Result,
        source_ip: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Persist and log one event; returns it (``id`` is None if the database write failed)."""
        event = self.make_event(user_id, action, resource, result, source_ip, details)
        if self.db is not None:
            try:
                with self.db.session() as s:
                    s.add(event)
            except SQLAlchemyError as exc:
                # A security event must not turn into a 500 because the database hiccupped;
                # the log line below still carries the whole event.
                log.error("audit event %s not persisted: %s", action, exc)
        self.emit(event)
        return event

    def add(self, session: Session, event: AuditEvent) -> None:
        """Add ``event`` to a caller's transaction (atomic with the change it records), then log it."""
        session.add(event)
        self.emit(event)

    @staticmethod
    def make_event(
        user_id: str,
        action: str,
        resource: str,
        result: Result,
        source_ip: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        if result not in ("success", "failure"):
            raise ValueError(f"audit result must be 'success' or 'failure', got {result!r}")
        return AuditEvent(
            timestamp=datetime.now(UTC),
            user_id=user_id,
            action=action,
            resource=resource,
            result=result,
            source_ip=source_ip or LOCAL_SOURCE,
            details=dict(details or {}),
        )

    def emit(self, event: AuditEvent) -> None:
        level = logging.INFO if event.result == "success" else logging.WARNING
        self.logger.log(
            level,
            "audit %s %s on %s by %s from %s",
            event.action,
            event.result,
            event.resource,
            event.user_id,
            event.source_ip or "-",
            extra={
                "audit": True,
                "user_id": event.user_id,
                "audit_timestamp": event.timestamp.isoformat(),
                "action": event.action,
                "resource": event.resource,
                "result": event.result,
                "source_ip": event.source_ip,
                "details": event.details,
            },
        )
        audit_file = current_audit_file()
        if audit_file is not None:
            audit_file.write(event_fields(event))


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """The guide's fields of one event, JSON-ready (the audit file's line, ``audit query --json``)."""
    return {
        "id": event.id,
        "timestamp": event.timestamp.isoformat(),
        "user_id": event.user_id,
        "action": event.action,
        "resource": event.resource,
        "result": event.result,
        "source_ip": event.source_ip,
        "details": event.details,
    }
