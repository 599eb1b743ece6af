"""Exports in the audit trail: ``mobile-mm export`` and the jobs of ``POST /export``.

A mobile export copies the model's weights out of the service's control, so each one is an
audit event: who (``cli:<os user>`` or the admin key's user), what (platform, format,
quantization, model), where to (``resource`` = ``export:<out dir>`` or ``export:<id>``), and how
it ended (``success`` / ``failure`` with the error code). ``POST /export`` records
``export.request`` when it accepts a job (with the client's address) and ``export.finish`` when
the job ends; the CLI records ``export.run`` when its export ends.

Example::

    manifest = audited_cli_export(platform="android", fmt="onnx", quantization="int2",
                                  model="default", out=Path("dist/android"))
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from mobile_multimodal.security.audit import AuditLog, Result
from mobile_multimodal.settings import Settings, get_settings
from mobile_multimodal.store import Database, DatabaseError
from mobile_multimodal.store.export_records import get_export
from mobile_multimodal.store.recorded_export import export_from_cli


def _cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def audited_cli_export(*, settings: Settings | None = None, **options: Any) -> dict[str, Any]:
    """:func:`~mobile_multimodal.store.recorded_export.export_from_cli`, then an ``export.run`` event."""
    settings = settings or get_settings()
    result: Result = "failure"
    code: str | None = None
    try:
        manifest = export_from_cli(settings=settings, **options)
        result = "success"
        return manifest
    except BaseException as exc:  # KeyboardInterrupt included: an interrupted export is audited too
        code = str(getattr(exc, "code", type(exc).__name__))
        raise
    finally:
        details = {
            key: str(options.get(key))
            for key in ("platform", "fmt", "quantization", "model")
            if options.get(key) is not None
        }
        if code is not None:
            details["error_code"] = code
        _record(settings, _cli_user(), "export.run", f"export:{Path(options['out'])}", result, details)


def _record(
    settings: Settings, user: str, action: str, resource: str, result: Result, details: dict[str, Any]
) -> None:
    try:
        db: Database | None = Database(settings.resolved_database_url)
    except (DatabaseError, OSError):  # the event still reaches the log and the audit file
        db = None
    try:
        AuditLog(db).record(user_id=user, action=action, resource=resource, result=result, details=details)
    finally:
        if db is not None:
            db.dispose()


def audit_export_finished(db: Database, export_id: str) -> None:
    """``export.finish`` for a ``POST /export`` job, from its row (call when the job has ended)."""
    record = get_export(db, export_id)
    if record is None:
        return
    AuditLog(db).record(
        user_id=record.requested_by,
        action="export.finish",
        resource=f"export:{export_id}",
        result="success" if record.status == "succeeded" else "failure",
        details={
            "platform": record.platform,
            "format": record.format,
            "quantization": record.quantization,
            "status": record.status,
            "error_code": record.error_code,
        },
    )
