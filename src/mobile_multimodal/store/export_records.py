"""Every mobile export in the ``export_records`` table: add, move through its states, list, get.

A CLI export adds its row as ``running`` and finishes it; a ``POST /export`` job adds it as
``queued`` (the id it answers with) and the child process that runs it moves it on. Finished rows
are what the Pushgateway push counts (:func:`export_group`), so export history survives the
short-lived process that ran it.

Example::

    record = add_export(db, platform="android", fmt="onnx", quantization="int2",
                        requested_by="cli:alice", model="default", out_dir="bundle", status="running")
    finish_export(db, record.id, duration_s=41.2, manifest=manifest)
    [latest] = list_exports(db, limit=1)
"""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from mobile_multimodal.observability.pushgateway import ExportGroup
from mobile_multimodal.store.database import Database
from mobile_multimodal.store.tables import EXPORT_STATES, ExportRecord

UNFINISHED = ("queued", "running")


def this_host() -> str:
    """The name exports run here are recorded (and pushed) under."""
    return socket.gethostname()


def add_export(
    db: Database,
    *,
    platform: str,
    fmt: str,
    quantization: str,
    requested_by: str,
    model: str,
    out_dir: str,
    status: str = "queued",
    export_id: str | None = None,
) -> ExportRecord:
    if status not in UNFINISHED:
        raise ValueError(f"a new export starts queued or running, not {status!r}")
    now = datetime.now(UTC)
    record = ExportRecord(
        id=export_id or uuid.uuid4().hex,
        platform=platform,
        format=fmt,
        quantization=quantization,
        status=status,
        created_at=now,
        started_at=now if status == "running" else None,
        requested_by=requested_by,
        host=this_host(),
        model=model,
        out_dir=out_dir,
    )
    with db.session() as s:
        s.add(record)
    return record


def mark_running(db: Database, export_id: str) -> ExportRecord:
    """queued → running; raises KeyError for an unknown id, ValueError if it is not queued."""
    with db.session() as s:
        record = s.get(ExportRecord, export_id)
        if record is None:
            raise KeyError(export_id)
        if record.status != "queued":
            raise ValueError(f"export {export_id} is {record.status}, not queued")
        record.status = "running"
        record.started_at = datetime.now(UTC)
        record.host = this_host()
    return record


def finish_export(
    db: Database,
    export_id: str,
    *,
    duration_s: float | None,
    manifest: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> ExportRecord:
    """Record the outcome: succeeded with its manifest, or failed with an error code and message.

    A row that is already finished keeps its first outcome (a job's parent process finishing a
    row its child already finished must not overwrite the child's result).
    """
    if (manifest is None) == (error_code is None):
        raise ValueError("finish an export with either a manifest or an error code")
    with db.session() as s:
        record = s.get(ExportRecord, export_id)
        if record is None:
            raise KeyError(export_id)
        if record.status in UNFINISHED:
            record.status = "succeeded" if manifest is not None else "failed"
            record.finished_at = datetime.now(UTC)
            record.duration_s = duration_s
            record.manifest = manifest
            if manifest is not None:
                record.size_bytes = sum(int(f["bytes"]) for f in manifest.get("files", []))
            record.error_code = error_code
            record.error_message = error_message
    return record


def fail_unfinished(
    db: Database, error_code: str, error_message: str, *, requested_by_prefix: str = ""
) -> int:
    """Mark queued/running rows failed (their process is gone); returns how many.

    ``requested_by_prefix`` limits it to rows of one origin: the server fails only its own jobs
    ("api:"), never a CLI export that is running meanwhile in another process.
    """
    with db.session() as s:
        result = s.execute(
            update(ExportRecord)
            .where(
                ExportRecord.status.in_(UNFINISHED),
                ExportRecord.requested_by.startswith(requested_by_prefix, autoescape=True),
            )
            .values(
                status="failed",
                finished_at=datetime.now(UTC),
                error_code=error_code,
                error_message=error_message,
            )
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def get_export(db: Database, export_id: str) -> ExportRecord | None:
    with db.session() as s:
        return s.get(ExportRecord, export_id)


def list_exports(
    db: Database, *, limit: int = 50, platform: str | None = None, status: str | None = None
) -> list[ExportRecord]:
    """The newest exports first."""
    if status is not None and status not in EXPORT_STATES:
        raise ValueError(f"status must be one of {EXPORT_STATES}, got {status!r}")
    query = select(ExportRecord).order_by(ExportRecord.created_at.desc()).limit(limit)
    if platform is not None:
        query = query.where(ExportRecord.platform == platform)
    if status is not None:
        query = query.where(ExportRecord.status == status)
    with db.session() as s:
        return list(s.scalars(query))


def export_group(db: Database, *, host: str, platform: str, fmt: str, quantization: str) -> ExportGroup:
    """The finished exports of one group on one host, as the Pushgateway push reports them."""
    query = (
        select(ExportRecord)
        .where(
            ExportRecord.host == host,
            ExportRecord.platform == platform,
            ExportRecord.format == fmt,
            ExportRecord.quantization == quantization,
            ExportRecord.status.in_(("succeeded", "failed")),
        )
        .order_by(ExportRecord.finished_at)
    )
    with db.session() as s:
        rows = list(s.scalars(query))
    succeeded = [r for r in rows if r.status == "succeeded"]
    latest = succeeded[-1] if succeeded else None
    validation = (latest.manifest or {}).get("validation", {}) if latest is not None else {}
    executed = bool(validation.get("executed"))
    return ExportGroup(
        host=host,
        platform=platform,
        format=fmt,
        quantization=quantization,
        counts={"success": len(succeeded), "failure": len(rows) - len(succeeded)},
        durations_s=[r.duration_s for r in succeeded if r.duration_s is not None],
        size_bytes=latest.size_bytes if latest is not None else None,
        validation_scores=dict(validation.get("tasks", {})) if executed else {},
        runtime_latency_s=dict(validation.get("latency_s", {})) if executed else {},
    )


def to_json(record: ExportRecord) -> dict[str, Any]:
    """The API's view of a record (``GET /export/{id}``): no host paths beyond the bundle's."""
    return {
        "id": record.id,
        "status": record.status,
        "platform": record.platform,
        "format": record.format,
        "quantization": record.quantization,
        "created_at": record.created_at.isoformat(),
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "duration_s": record.duration_s,
        "size_bytes": record.size_bytes,
        "requested_by": record.requested_by,
        "error": (
            {"code": record.error_code, "message": record.error_message} if record.error_code else None
        ),
        "manifest": record.manifest,
    }
