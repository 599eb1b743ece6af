"""Run one mobile export, record it in ``export_records`` and push its group's history.

What ``mobile-mm export`` and the child process of a ``POST /export`` job both call. The export
itself (``export.pipeline.export_model``) knows nothing of the database (export sits below
store); this module wraps it: the row is written as running before any work, finished with the
manifest or the error, and then, when ``MOBILE_MM_PUSHGATEWAY_URL`` is set, the history of the
export's (host, platform, format, quantization) group is pushed (observability/pushgateway.py
explains why the history and not this process's counters).

A request refused before any work (an unknown platform, Core ML for Android) raises at once and
is not recorded: nothing was exported.

``mobile-mm export`` calls :func:`export_from_cli`, which adds what a command-line process needs:
the database from the settings (an export still runs when it is unavailable), ``requested_by``
from the OS user, and the service's logs and traces for the process (process_telemetry.py).

Example::

    manifest = export_from_cli(platform="android", fmt=None, quantization="int2", model="default",
                               out=Path("bundle"), validation_examples=32)
    manifest = run_recorded_export(
        Database(), platform="android", fmt="onnx", quantization="int2", model="default",
        out=Path("bundle"), requested_by="cli:alice", pushgateway_url="http://pushgateway:9091")
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.export.formats import check_quantization, resolve_format
from mobile_multimodal.observability.process_telemetry import process_telemetry
from mobile_multimodal.observability.pushgateway import push_export_group
from mobile_multimodal.settings import Settings, get_settings
from mobile_multimodal.store.database import Database, DatabaseError
from mobile_multimodal.store.export_records import (
    add_export,
    export_group,
    finish_export,
    mark_running,
    this_host,
)

ExportFn = Callable[..., dict[str, Any]]
# Recorded for a failure that is not an ExportError (a bug): the message says what it was.
UNEXPECTED = "INTERNAL_ERROR"
_log = logging.getLogger("mobile_multimodal.export")


def _default_export() -> ExportFn:
    from mobile_multimodal.export.pipeline import export_model

    return export_model


def run_recorded_export(
    db: Database | None,
    *,
    platform: str,
    fmt: str | None,
    quantization: str,
    model: str,
    out: Path,
    requested_by: str,
    export_id: str | None = None,
    pushgateway_url: str | None = None,
    push_timeout_s: float = 10.0,
    export: ExportFn | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export, record, push; returns the manifest or raises the export's ExportError.

    ``options`` go to the export as they are (``validation_examples``, ``overwrite``, ``progress``).

    ``db`` None (the database could not be opened): the export still runs, unrecorded and
    unpushed (a push must carry the group's whole history, which only the database has).
    ``export_id`` names a queued row to run (a ``POST /export`` job); else a new row is added.
    """
    fmt = resolve_format(platform, fmt)
    check_quantization(quantization)
    run = export or _default_export()
    if db is not None:
        if export_id is not None:
            mark_running(db, export_id)
        else:
            export_id = add_export(
                db,
                platform=platform,
                fmt=fmt,
                quantization=quantization,
                requested_by=requested_by,
                model=model,
                out_dir=str(out),
                status="running",
            ).id
    if db is not None and pushgateway_url:
        # The group's series exist before they move: rate() and increase() count a change
        # between two scrapes, not a series that appears already at 1 (its first export).
        _push(db, pushgateway_url, platform, fmt, quantization, push_timeout_s)
    start = time.perf_counter()
    manifest: dict[str, Any] | None = None
    code, message = UNEXPECTED, ""
    try:
        manifest = run(model, platform=platform, fmt=fmt, quantization=quantization, out=out, **options)
        return manifest
    except ExportError as exc:
        code, message = str(exc.code), exc.message
        raise
    except KeyboardInterrupt:
        code, message = str(ExportErrorCode.EXPORT_INTERRUPTED), "the export was interrupted"
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if db is not None and export_id is not None:
            _finish(db, export_id, time.perf_counter() - start, manifest, code, message)
            if pushgateway_url:
                _push(db, pushgateway_url, platform, fmt, quantization, push_timeout_s)


def _push(db: Database, url: str, platform: str, fmt: str, quantization: str, timeout_s: float) -> None:
    try:
        group = export_group(db, host=this_host(), platform=platform, fmt=fmt, quantization=quantization)
    except SQLAlchemyError as exc:  # a push is never worth failing an export for
        _log.warning("export metrics not pushed: %s", exc, extra={"operation": "mobile_export_push"})
        return
    push_export_group(url, group, timeout_s=timeout_s)


def _finish(
    db: Database, export_id: str, duration_s: float, manifest: dict[str, Any] | None, code: str, message: str
) -> None:
    try:
        if manifest is not None:
            finish_export(db, export_id, duration_s=duration_s, manifest=manifest)
        else:
            finish_export(db, export_id, duration_s=duration_s, error_code=code, error_message=message)
    except (DatabaseError, SQLAlchemyError, OSError) as exc:
        # The export's own outcome matters more than its record: log, do not mask it.
        _log.error("export %s not recorded: %s", export_id, exc, extra={"operation": "mobile_export"})


def export_from_cli(
    *,
    platform: str,
    fmt: str | None,
    quantization: str,
    model: str,
    out: Path,
    settings: Settings | None = None,
    **options: Any,
) -> dict[str, Any]:
    """What ``mobile-mm export`` runs: a recorded, pushed export with the service's telemetry."""
    settings = settings or get_settings()
    # stdout is the command's (the manifest with --json): log lines go to the log file only
    with process_telemetry(settings, traceparent=os.environ.get("TRACEPARENT"), stdout=False):
        try:
            db: Database | None = Database(settings.resolved_database_url)
        except (DatabaseError, OSError) as exc:
            _log.warning(
                "the export runs unrecorded (its metrics are not pushed): %s",
                exc,
                extra={"operation": "mobile_export"},
            )
            db = None
        try:
            return run_recorded_export(
                db,
                platform=platform,
                fmt=fmt,
                quantization=quantization,
                model=model,
                out=out,
                requested_by=f"cli:{_os_user()}",
                pushgateway_url=settings.pushgateway_url,
                push_timeout_s=settings.pushgateway_timeout_s,
                **options,
            )
        finally:
            if db is not None:
                db.dispose()


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid{os.getuid()}"
