"""``POST /export`` and ``GET /export/{id}``: mobile exports run by the service, for admin keys only.

The first admin routes. Every call goes through ``require_admin``: no key, a bad key or a key
without admin rights is refused (401/403), audited and counted as an ``unauthorized`` security
event (the UnauthorizedAccess alert). The body is checked before any work: unknown values are a
422 ``VALIDATION_ERROR``, a pair that makes no sense (Core ML for Android) a 422
``UNSUPPORTED_PLATFORM_FORMAT``, a format whose toolchain this server lacks a 422
``EXPORT_DEPENDENCY_MISSING``. One export runs at a time (409 ``EXPORT_IN_PROGRESS`` with
``Retry-After`` meanwhile); serving/export_jobs.py runs it in a child process.

Example::

    curl -X POST localhost:8080/export -H "Authorization: Bearer $ADMIN_KEY" \
         -H 'Content-Type: application/json' -d '{"platform": "android", "quantization": "int2"}'
    # 202 {"id": "3f...", "status": "queued", ...}
    curl localhost:8080/export/3f... -H "Authorization: Bearer $ADMIN_KEY"
    # {"status": "succeeded", "manifest": {...}, ...}
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from opentelemetry.propagate import inject
from pydantic import BaseModel, ConfigDict, Field

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.export.formats import load_writer, resolve_format
from mobile_multimodal.security import Principal, checks_key_before_body, client_ip, require_admin
from mobile_multimodal.serving.error_handlers import ErrorCode, ServiceError
from mobile_multimodal.serving.export_jobs import JOB_ORIGIN, ExportBusy, ExportJobs
from mobile_multimodal.serving.openapi import error_responses
from mobile_multimodal.store import Database
from mobile_multimodal.store.export_records import get_export, list_exports, to_json

# A client told to come back later: an export takes about a minute (benchmarks/export/).
RETRY_AFTER_S = 30


def _database(request: Request) -> Database:
    database = getattr(request.app.state, "database", None)
    if database is None:
        raise ServiceError(
            ErrorCode.DATABASE_UNAVAILABLE,
            "exports are recorded in the database, which is unavailable (see /health)",
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return database


@checks_key_before_body  # no admin key, no body read (require_admin answers once per request)
async def admin(request: Request) -> Principal:
    """An admin principal (security's require_admin), once the store that checks keys is there."""
    _database(request)
    return await require_admin(request)


router = APIRouter(tags=["export"], dependencies=[Depends(admin)])
_RESPONSES = error_responses(401, 403, 404, 409, 422, 429, 503)


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    platform: Literal["android", "ios"]
    format: Literal["onnx", "executorch", "coreml", "tflite"] | None = Field(
        None, description="Default: the platform's (onnx for android, coreml for ios)."
    )
    quantization: Literal["fp32", "int8", "int4", "int2"] = "fp32"


def _jobs(request: Request) -> ExportJobs:
    jobs = getattr(request.app.state, "export_jobs", None)
    if jobs is None:
        jobs = request.app.state.export_jobs = ExportJobs(request.app.state.settings, _database(request))
    return jobs


def _check_format(platform: str, fmt: str | None) -> str:
    try:
        fmt = resolve_format(platform, fmt)
        writer = load_writer(fmt)
    except ExportError as exc:
        if exc.code == ExportErrorCode.EXPORT_DEPENDENCY_MISSING:
            raise ServiceError(ErrorCode.EXPORT_DEPENDENCY_MISSING, exc.message) from exc
        raise ServiceError(ErrorCode.UNSUPPORTED_PLATFORM_FORMAT, exc.message) from exc
    missing = sorted(pkg for pkg, version in writer.toolchain().items() if version is None)
    if missing:
        raise ServiceError(
            ErrorCode.EXPORT_DEPENDENCY_MISSING,
            f"this server cannot export {fmt}: {', '.join(missing)} is not installed "
            "(see `mobile-mm export check`)",
        )
    return fmt


@router.post("/export", status_code=202, responses=_RESPONSES)
async def start_export(body: ExportRequest, request: Request) -> JSONResponse:
    """Start an export job; 202 with its id (poll ``GET /export/{id}``)."""
    fmt = await anyio.to_thread.run_sync(_check_format, body.platform, body.format)
    principal: Principal = request.state.principal
    carrier: dict[str, str] = {}
    inject(carrier)  # the job's spans join this request's trace
    jobs = _jobs(request)
    try:
        record = await anyio.to_thread.run_sync(
            lambda: jobs.submit(
                platform=body.platform,
                fmt=fmt,
                quantization=body.quantization,
                requested_by=f"{JOB_ORIGIN}{principal.user_id}/{principal.key_id or 'local'}",
                traceparent=carrier.get("traceparent"),
            )
        )
    except ExportBusy:
        raise ServiceError(
            ErrorCode.EXPORT_IN_PROGRESS,
            f"another export is running; one runs at a time. Retry in {RETRY_AFTER_S} s",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    security = getattr(request.app.state, "security", None)
    if security is not None:  # a copy of the model leaves the service: who asked, from where
        await anyio.to_thread.run_sync(
            lambda: security.audit.record(
                user_id=principal.user_id,
                action="export.request",
                resource=f"export:{record.id}",
                result="success",
                source_ip=client_ip(request.scope),
                details={"platform": body.platform, "format": fmt, "quantization": body.quantization},
            )
        )
    view = to_json(record)
    return JSONResponse(view, status_code=202, headers={"Location": f"/export/{record.id}"})


@router.get("/export/{export_id}", responses=_RESPONSES)
async def export_status(export_id: str, request: Request) -> dict[str, Any]:
    """State (queued, running, succeeded, failed), error and manifest of one export."""
    database = _database(request)
    record = await anyio.to_thread.run_sync(get_export, database, export_id)
    if record is None:
        raise ServiceError(ErrorCode.NOT_FOUND, f"no export {export_id!r}")
    return to_json(record)


@router.get("/export", responses=_RESPONSES)
async def recent_exports(request: Request, limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    """The newest exports first, run by the service or the CLI against this database."""
    database = _database(request)
    records = await anyio.to_thread.run_sync(lambda: list_exports(database, limit=limit))
    return {"exports": [to_json(r) for r in records]}
