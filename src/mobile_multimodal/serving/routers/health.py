"""Liveness, readiness, the guide's ``/health`` JSON, and a real probe inference.

* ``GET /alive``: the process answers (never touches the model or the database).
* ``GET /ready``: 200 only once the model is loaded *and* a warm-up inference succeeded; 503
  while loading, after a failed load, and while shutting down.
* ``GET /health``: database, model, memory and disk checks (observability/health_checks.py); 503 when
  any is unhealthy.
* ``GET|POST /model/health``: runs the known-answer probe through the batcher and the model and
  reports its latency and whether the answer was right; 503 when it failed or was wrong. At most
  one probe runs per ``MOBILE_MM_MODEL_HEALTH_CACHE_S``: concurrent calls share the one in flight
  and later ones get its answer (probe_cache.py), so a flood of calls costs one inference. Its
  ``integrity`` section is read live: model files that differ from their manifest make it 503
  ``MODEL_INTEGRITY_FAILED``, as ``/health`` does.

None of these need an API key, so none says more than a caller needs: no process id, no paths.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mobile_multimodal.observability.health_checks import HealthChecker
from mobile_multimodal.serving.deps import get_engine
from mobile_multimodal.serving.engine import InferenceEngine, Job
from mobile_multimodal.serving.error_handlers import ErrorCode, ServiceError, public_message
from mobile_multimodal.serving.probe_cache import CachedProbe, ProbeAnswer
from mobile_multimodal.serving.request_pipeline import require_ready, submit
from mobile_multimodal.serving.schemas import (
    AliveResponse,
    ErrorDetail,
    HealthResponse,
    ModelHealthResponse,
    ModelRef,
    ProbeResult,
    ReadyResponse,
)

router = APIRouter(tags=["health"])


@router.get("/alive", response_model=AliveResponse, summary="Liveness")
async def alive(request: Request) -> AliveResponse:
    checker: HealthChecker = request.app.state.health_checker
    return AliveResponse(status="alive", uptime_seconds=checker.uptime_seconds())


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Loading, failed to load, or shutting down"}},
    summary="Readiness",
)
async def ready(request: Request) -> JSONResponse:
    engine = get_engine(request)
    if request.app.state.shutting_down:
        body = ReadyResponse(
            status="shutting_down",
            model_loaded=engine.model is not None,
            warmed_up=engine.warmed_up,
            reason="the server is shutting down",
        )
        return JSONResponse(body.model_dump(), status_code=503)
    if engine.ready:
        return JSONResponse(ReadyResponse(status="ready", model_loaded=True, warmed_up=True).model_dump())
    if engine.state == "failed" and engine.error is not None:
        reason = f"{engine.error.code}: {engine.error.message}"
    else:
        reason = f"model state: {engine.state}"
    body = ReadyResponse(
        status="not_ready", model_loaded=engine.model is not None, warmed_up=engine.warmed_up, reason=reason
    )
    return JSONResponse(body.model_dump(), status_code=503)


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "At least one check is unhealthy"}},
    summary="Database, model, memory and disk checks",
)
async def health(request: Request) -> JSONResponse:
    checker: HealthChecker = request.app.state.health_checker
    report = await anyio.to_thread.run_sync(checker.run)  # the database ping blocks
    return JSONResponse(report, status_code=200 if report["status"] == "healthy" else 503)


async def _probe(engine: InferenceEngine) -> ProbeAnswer:
    probe = engine.probe
    checked_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    model_ref = ModelRef(**engine.describe()) if engine.model is not None else None
    ran = False
    try:
        require_ready(engine)
        ran = True
        start = time.perf_counter()
        outcome = await submit(engine, "captioning", Job(image=probe.image), 32)
        latency_ms = (time.perf_counter() - start) * 1000
    except ServiceError as exc:
        failed = ModelHealthResponse(
            status="unhealthy",
            model=model_ref,
            probe=None,
            error=ErrorDetail(code=exc.code, message=public_message(exc)),
            checked_at=checked_at,
        )
        return ProbeAnswer(503, failed.model_dump(mode="json"), ran_inference=ran)
    answer = str(outcome.result["caption"])
    correct = probe.is_correct(answer)
    report = ModelHealthResponse(
        status="healthy" if correct else "unhealthy",
        model=model_ref,
        probe=ProbeResult(
            task="captioning",
            expected=probe.expected,
            answer=answer,
            correct=correct,
            latency_ms=round(latency_ms, 3),
        ),
        error=None
        if correct
        else ErrorDetail(
            code=ErrorCode.MODEL_PROBE_FAILED, message="the probe's caption does not name its object"
        ),
        checked_at=checked_at,
    )
    return ProbeAnswer(200 if correct else 503, report.model_dump(mode="json"), ran_inference=True)


async def _model_health(request: Request) -> JSONResponse:
    cache: CachedProbe | None = getattr(request.app.state, "model_probe", None)
    if cache is None:  # one per app, made on first use (the event loop runs one request at a time here)
        engine = get_engine(request)
        cache = CachedProbe(lambda: _probe(engine), ttl_s=engine.settings.model_health_cache_s)
        request.app.state.model_probe = cache
    answer = await cache.get()
    body, status_code = dict(answer.body), answer.status_code
    # Integrity is read live, not from the probe cache: a tampered file shows at once, as in /health.
    duties = getattr(request.app.state, "duties", None)
    if duties is not None:
        integrity = duties.integrity_report()
        body["integrity"] = integrity
        if integrity["status"] == "unhealthy":
            body["status"] = "unhealthy"
            # the files' state outranks a probe's answer: it is what an operator must act on first
            body["error"] = {"code": ErrorCode.MODEL_INTEGRITY_FAILED, "message": integrity["message"]}
            status_code = 503
    return JSONResponse(body, status_code=status_code)


_MODEL_HEALTH_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"model": ModelHealthResponse, "description": "Model not ready, probe failed, or answered wrongly"}
}


@router.get(
    "/model/health",
    response_model=ModelHealthResponse,
    responses=_MODEL_HEALTH_RESPONSES,
    summary="Probe inference (latency and correctness)",
)
async def model_health_get(request: Request) -> JSONResponse:
    return await _model_health(request)


@router.post(
    "/model/health",
    response_model=ModelHealthResponse,
    responses=_MODEL_HEALTH_RESPONSES,
    summary="Probe inference (same as GET)",
)
async def model_health_post(request: Request) -> JSONResponse:
    return await _model_health(request)
