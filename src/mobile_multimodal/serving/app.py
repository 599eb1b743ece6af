"""The FastAPI application factory: routes, error handlers, observability, store and engine.

The app starts answering at once: ``/alive`` is 200 from the first request, ``/ready`` is 503
until the model has loaded and a warm-up inference succeeded (the engine loads in the
background). The background duties (background.py: configuration record, model integrity
loop, backup metrics) start with it; a model file changed on disk turns ``/health`` 503
(``MODEL_INTEGRITY_FAILED``) while inference goes on, background.py says why. SIGHUP re-reads
the configuration and reloads a changed model (reload.py); audit events also go to
``<log dir>/audit.jsonl`` (security/audit_file.py). On shutdown
(SIGTERM, after uvicorn has drained in-flight requests) the duties stop, the batcher finishes
what is queued, then telemetry is flushed.

Example::

    app = create_app(Settings(model="default", quantization="int2"))
    uvicorn.run(app, port=8080)

    # tests: a real model, built in-process instead of read from disk
    app = create_app(settings, model_loader=lambda s: MobileMultiModalLLM.from_config(ModelConfig.tiny()))
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import get_args

from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SpanExporter

from mobile_multimodal.observability import Observability, metrics
from mobile_multimodal.observability.health_checks import HealthChecker
from mobile_multimodal.observability.identity import SERVICE_NAME, service_version
from mobile_multimodal.security.audit_file import (
    configure_audit_file,
    configure_from_settings,
    current_audit_file,
)
from mobile_multimodal.security.auth_dependencies import install_security
from mobile_multimodal.serving.background import BackgroundDuties
from mobile_multimodal.serving.body_limit import BodyLimitMiddleware
from mobile_multimodal.serving.database_errors import install_database_error_handler
from mobile_multimodal.serving.early_refusal import EarlyRefusalMiddleware
from mobile_multimodal.serving.engine import InferenceEngine, ModelLoader, ServableModel
from mobile_multimodal.serving.error_handlers import ErrorCode, install_error_handlers
from mobile_multimodal.serving.key_before_body import KeyBeforeBodyMiddleware
from mobile_multimodal.serving.openapi import install_openapi
from mobile_multimodal.serving.parent_watch import exit_with_parent
from mobile_multimodal.serving.reload import ServiceReloader
from mobile_multimodal.serving.routers import api_docs, export, health, inference, openai_compat
from mobile_multimodal.serving.schemas import Task
from mobile_multimodal.settings import Settings, get_settings
from mobile_multimodal.store import Database
from mobile_multimodal.store.database import DatabaseError

log = logging.getLogger(__name__)


def _open_database(settings: Settings) -> tuple[Database | None, str]:
    """The project's store, or None and why (the service still starts; /health reports it)."""
    try:
        return Database(settings.resolved_database_url), ""
    except (DatabaseError, OSError) as exc:  # OSError: the SQLite directory cannot be created
        log.error("database unavailable: %s", exc)
        return None, f"database unavailable: {exc}"


def _model_status(engine: InferenceEngine, duties: BackgroundDuties) -> tuple[str | None, str]:
    if engine.state == "ready":
        # Files changed on disk: unhealthy, though still serving the weights verified at load.
        problem = duties.integrity_problem()
        if problem is not None:
            return ErrorCode.MODEL_INTEGRITY_FAILED, problem
        return None, "ready"
    if engine.state == "loading":
        return ErrorCode.MODEL_LOADING, "the model is loading"
    if engine.state == "failed":
        detail = f" ({engine.error.code}: {engine.error.message})" if engine.error else ""
        return ErrorCode.MODEL_LOAD_FAILED, f"Model failed to load{detail}"
    return ErrorCode.SHUTTING_DOWN, "the server is shutting down"


def create_app(
    settings: Settings | None = None,
    model_loader: ModelLoader | None = None,
    *,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """Build the service. ``model_loader(settings)`` returns the model (default: the model of
    ``settings.runtime``, see ``runtime_loader.py``)."""
    settings = settings if settings is not None else get_settings()
    observability = Observability(settings, span_exporter=span_exporter)
    metrics.initialize_known_series(get_args(Task))
    engine = InferenceEngine(
        settings,
        model_loader or _runtime_loader,
        on_loaded=observability.record_model_loaded,  # type: ignore[arg-type]
        on_load_failed=observability.record_model_load_failure,
    )
    database, database_error = _open_database(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await observability.start()
        audit_file = configure_from_settings(settings)  # <log dir>/audit.jsonl
        await engine.start()
        await duties.start()
        reloader.install_signal_handler()  # SIGHUP: re-read the configuration (reload.py)
        try:
            yield
        finally:
            app.state.shutting_down = True
            reloader.remove_signal_handler()
            await duties.stop()  # before the database closes: the loops write to it
            if audit_file is not None and current_audit_file() is audit_file:
                configure_audit_file(None)
            await engine.stop()
            if database is not None:
                database.dispose()
            await observability.stop()
            _mark_process_dead()

    app = FastAPI(
        title=SERVICE_NAME,
        version=service_version(),
        summary="Captioning, OCR, VQA and retrieval with a small multimodal model.",
        lifespan=lifespan,
        # Starlette answers a path with an extra (or missing) slash with a redirect whose Location
        # is built from the request's Host header: a client-chosen host in our answer. Our paths
        # are exact; `POST /inference/` is a 404.
        redirect_slashes=False,
        # the schema and its viewers take an API key like the API (routers/api_docs.py)
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_database_error_handler(app)  # a database down mid-run: 503 + Retry-After
    install_openapi(app, auth_required=settings.auth == "required")
    app.include_router(inference.router)
    app.include_router(openai_compat.router)
    app.include_router(health.router)
    app.include_router(export.router)  # admin keys only (its own dependency)
    app.include_router(api_docs.router)
    # Added first = innermost; the observability middleware (added last) wraps everything and
    # so also counts and traces the 413s and 401s of the layers inside it. SecurityMiddleware
    # refuses a declared Content-Length over the limit; BodyLimitMiddleware inside it counts
    # chunked bodies and reports an oversized one to app.state.security as an anomaly.
    # KeyBeforeBodyMiddleware (innermost) checks a keyed route's API key before its body is read.
    # EarlyRefusalMiddleware, outside both, refuses an inference request while the engine is over
    # its wait budget before anything is read or checked: an overload's refusals must be cheap.
    app.add_middleware(KeyBeforeBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(EarlyRefusalMiddleware, engine=engine)
    security = install_security(app, settings, database)  # None without a database
    observability.install(app)
    duties = BackgroundDuties(settings, engine, database, security)
    reloader = ServiceReloader(app)

    app.state.settings = settings
    app.state.engine = engine
    app.state.database = database
    app.state.duties = duties
    app.state.reloader = reloader
    app.state.health_checker = HealthChecker(
        settings,
        database=database,
        model_status=lambda: _model_status(engine, duties),
        database_unavailable_reason=database_error,
    )
    app.state.observability = observability
    app.state.shutting_down = False
    app.state.started_wall = time.time()
    return app


def _runtime_loader(settings: Settings) -> ServableModel:
    """The default loader: the model of ``settings.runtime`` (PyTorch, or ONNX Runtime on an
    export bundle); imported when first used, so an app never serving a bundle never loads
    onnxruntime."""
    from mobile_multimodal.serving.runtime_loader import load_model

    return load_model(settings)


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and ``--workers N``: settings from the environment."""
    get_settings.cache_clear()
    settings = get_settings()
    exit_with_parent(grace_s=settings.shutdown_grace_s)  # a worker never outlives its supervisor
    return create_app(settings)


def _mark_process_dead() -> None:
    """Multiprocess metrics: drop this worker's live gauges from the aggregate."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
