"""Reload on SIGHUP: read the settings and ``observability.yml`` again, apply what can change
live, reload the model when it changed, and put each change in the audit trail.

``kill -HUP <pid of mobile-mm serve>`` (or ``docker kill -s HUP mobile-multimodal-prod``) runs
:meth:`ServiceReloader.reload`:

1. The settings are read again (:func:`~mobile_multimodal.settings.load_settings`: the
   environment over ``MOBILE_MM_SETTINGS_FILE``; a process's environment cannot change, the file
   can) and ``observability.yml`` with them. Invalid ones are refused: nothing changes, the
   failure is audited (``config.reload``, ``failure``) and logged.
2. The configuration is recorded (:func:`~mobile_multimodal.security.record_config_state`,
   ``source="reload"``): a different hash is ``config_changes_total{source="reload"}`` +1 (the
   ConfigurationChange alert), a ``config_change`` security event and a ``config.change`` audit
   row that lists the changed fields.
3. What can change live is applied at once (:data:`LIVE_FIELDS`): log level, access-log sampling
   and the slow-request threshold, rate limits, anomaly thresholds, the success-audit interval,
   the request timeout, the canary interval and size, the shadow sample rate, the integrity check
   interval. Everything else that changed (port, workers, database, auth mode, tracing,
   profiling, ...) is listed as ``restart_required`` in the audit row and the log: it takes
   effect at the next start.
4. The model is reloaded when a model setting changed (:data:`MODEL_FIELDS`), the model
   directory's ``manifest.json`` is no longer the one loaded (a new model written in place), or
   the start-up load failed (the files fixed since: the reload brings the service up, no restart). The
   new model is loaded, verified (checksums, and the signature when a signing key is set) and
   warmed up beside the served one, traced like the start-up load (``model_load`` with ``read``,
   ``verify``, ``build``, ``warm_up``; ``model.reload=true``), measured in
   ``model_load_duration_seconds``, then swapped in between two batches: no request fails. The
   integrity monitor then watches the new files. Audited as ``model.reload``. A model that fails
   to load (tampered, unsigned, corrupt) is refused: the verified model in memory keeps serving,
   ``model_load_failures_total`` +1 (ModelLoadingFailure), and the audit row says why.

With ``--workers N`` uvicorn's supervisor takes SIGHUP itself and restarts the workers one by
one; each re-reads everything at its start (``source="startup"``).

Example::

    reloader = ServiceReloader(app)
    reloader.install_signal_handler()     # in the lifespan, on the main thread
    outcome = await reloader.reload()     # what SIGHUP runs
    outcome.model                         # "unchanged" | "reloaded" | "failed"
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.observability.config import ObservabilityConfig, ObservabilityConfigError, load_config
from mobile_multimodal.observability.request_telemetry import ObservabilityMiddleware
from mobile_multimodal.security import AuditLog, SecurityContext, record_config_state
from mobile_multimodal.security.anomaly import AnomalyDetector
from mobile_multimodal.security.config_audit import settings_snapshot
from mobile_multimodal.security.redis_ratelimit import build_rate_limiter
from mobile_multimodal.serving.engine import ModelLoadFailure
from mobile_multimodal.settings import Settings, load_settings

log = logging.getLogger(__name__)

# Settings applied to the running service by a reload.
LIVE_FIELDS = frozenset(
    {
        "log_level",
        "log_sample_ratio",
        "rate_limit_free_per_minute",
        "rate_limit_free_burst",
        "rate_limit_pro_per_minute",
        "rate_limit_pro_burst",
        "anomaly_error_burst",
        "anomaly_window_s",
        "auth_success_audit_interval_s",
        "request_timeout_s",
        "canary_interval_s",
        "canary_size",
        "shadow_sample_rate",
        "integrity_check_interval_s",
        "domain_check_tasks",
    }
)
# observability.yml keys applied live (the rest need a restart: tracing, metrics buckets, ...).
LIVE_OBSERVABILITY = frozenset(
    {
        "observability.logging.level",
        "observability.logging.request_sample_ratio",
        "observability.logging.slow_request_ms",
    }
)
# A change to one of these loads the model again (runtime and bundle: with the loader of
# serving/runtime_loader.py, the one ``mobile-mm serve`` uses).
MODEL_FIELDS = frozenset(
    {
        "model",
        "quantization",
        "device",
        "runtime",
        "bundle",
        "onnx_weights",
        "ocr_decoding",
        "manifest_signing_key",
        "manifest_signing_key_file",
    }
)

ModelOutcome = Literal["unchanged", "reloaded", "failed"]


@dataclass
class ReloadOutcome:
    ok: bool
    config_changed: bool = False
    changed_fields: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    model: ModelOutcome = "unchanged"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ServiceReloader:
    """Re-reads and applies the configuration of the app it was made for (see the module docstring)."""

    def __init__(self, app: FastAPI, settings_loader: Callable[[], Settings] = load_settings) -> None:
        self.app = app
        self.settings_loader = settings_loader
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[ReloadOutcome]] = set()
        self.reloads = 0

    # --- the signal ---------------------------------------------------------------------------
    def install_signal_handler(self) -> bool:
        """SIGHUP -> :meth:`reload`; False where signals cannot be handled (not the main thread:
        a server run by a test in a thread; Windows)."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
            return False
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self._on_signal)
        return True

    def remove_signal_handler(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._loop = None

    def _on_signal(self) -> None:
        log.info("SIGHUP: reloading the configuration", extra={"operation": "config_reload"})
        task = asyncio.get_running_loop().create_task(self.reload(), name="config-reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the reload ---------------------------------------------------------------------------
    async def reload(self) -> ReloadOutcome:
        """Re-read, record, apply; one reload at a time (a second SIGHUP waits for the first)."""
        async with self._lock:
            try:
                outcome = await self._reload()
            except Exception as exc:  # a reload must never take the service down
                log.exception("configuration reload failed")
                outcome = ReloadOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
            self.reloads += 1
            log.info(
                "configuration reload: %s",
                "ok" if outcome.ok else f"failed ({outcome.error})",
                extra={"operation": "config_reload", **outcome.to_dict()},
            )
            return outcome

    async def _reload(self) -> ReloadOutcome:
        state = self.app.state
        old: Settings = state.settings
        try:
            new = await asyncio.to_thread(self.settings_loader)
            config = await asyncio.to_thread(load_config, new)
        except (ValidationError, ObservabilityConfigError, ValueError, OSError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            self._audit().record(
                user_id="system",
                action="config.reload",
                resource="settings",
                result="failure",
                details={"error": message[:2000], "signal": "SIGHUP"},
            )
            return ReloadOutcome(ok=False, error=message)
        # Before: what the service runs with (its observability configuration as read at start or
        # at the last reload; the file may have been edited since), after: what was just read.
        running = getattr(state, "observability", None)
        before = settings_snapshot(old, running.config if running is not None else None)
        after = settings_snapshot(new, config)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        outcome = ReloadOutcome(ok=True, changed_fields=changed)
        database = state.database
        if database is not None:
            try:
                change = await asyncio.to_thread(
                    record_config_state, database, new, audit=self._audit(), source="reload"
                )
                outcome.config_changed = change.changed
            except SQLAlchemyError as exc:
                log.error("configuration change not recorded: %s", exc)
        outcome.applied = self._apply_live(new, config, changed)
        outcome.restart_required = [
            f for f in changed if f not in LIVE_FIELDS | LIVE_OBSERVABILITY | MODEL_FIELDS
        ]
        if outcome.restart_required:
            log.warning(
                "changed settings that take effect at the next start: %s", ", ".join(outcome.restart_required)
            )
        changed_model = [f for f in changed if f in MODEL_FIELDS]
        failed_start = state.engine.state == "failed"  # files fixed since: a reload is the way back
        if changed_model or failed_start or self._model_files_changed():
            why = changed_model or (["failed start"] if failed_start else ["model files"])
            outcome.model, outcome.error = await self._reload_model(new, why)
            outcome.ok = outcome.model != "failed"
        state.settings = self._merged(old, new)
        return outcome

    def _audit(self) -> AuditLog:
        security: SecurityContext | None = getattr(self.app.state, "security", None)
        return security.audit if security is not None else AuditLog(self.app.state.database)

    def _merged(self, old: Settings, new: Settings) -> Settings:
        """The settings the service now runs with: the new live values, the old ones elsewhere
        (those take effect at the next start)."""
        engine = self.app.state.engine
        model_settings = engine.settings  # the model's own: new only when the reload succeeded
        live = {name: getattr(new, name) for name in LIVE_FIELDS}
        model = {name: getattr(model_settings, name) for name in MODEL_FIELDS}
        return old.model_copy(update={**live, **model})

    # --- live changes ---------------------------------------------------------------------------
    def _apply_live(self, new: Settings, config: ObservabilityConfig, changed: list[str]) -> list[str]:
        state = self.app.state
        applied: list[str] = []
        if any(f in LIVE_OBSERVABILITY or f in ("log_level", "log_sample_ratio") for f in changed):
            self._apply_logging(config)
            applied += [
                f for f in changed if f in LIVE_OBSERVABILITY or f in ("log_level", "log_sample_ratio")
            ]
        security: SecurityContext | None = getattr(state, "security", None)
        if security is not None:
            merged = security.settings.model_copy(update={name: getattr(new, name) for name in LIVE_FIELDS})
            if any(f.startswith("rate_limit_") for f in changed):
                # the kind the settings ask for: Redis-backed (deployment-wide) with a Redis URL
                security.limiter = build_rate_limiter(merged)  # local buckets start full
            if any(f.startswith("anomaly_") for f in changed):
                security.detector = AnomalyDetector.from_settings(merged)
            security.settings = merged
            applied += [f for f in changed if f.startswith(("rate_limit_", "anomaly_", "auth_success_audit"))]
        engine = state.engine
        live = {name: getattr(new, name) for name in LIVE_FIELDS}
        engine.settings = engine.settings.model_copy(update=live)
        applied += [f for f in ("request_timeout_s", "domain_check_tasks") if f in changed]
        duties = state.duties
        restarted = duties.apply_settings(engine.settings, changed)
        applied += restarted
        return sorted(set(applied))

    def _apply_logging(self, config: ObservabilityConfig) -> None:
        logging.getLogger().setLevel(config.logging.level)
        observability = self.app.state.observability
        observability.config = observability.config.model_copy(update={"logging": config.logging})
        # The request middleware holds its configuration; it reads the logging part per request.
        node: Any = self.app.middleware_stack
        while node is not None:
            if isinstance(node, ObservabilityMiddleware):
                node.cfg = node.cfg.model_copy(update={"logging": config.logging})
            node = getattr(node, "app", None)

    # --- the model ------------------------------------------------------------------------------
    def _model_files_changed(self) -> bool:
        """The model directory's manifest.json is no longer the one the served model was loaded from."""
        model = self.app.state.engine.model
        model_dir = getattr(model, "model_dir", None)
        loaded = getattr(model, "manifest", None)
        if model_dir is None or not loaded:
            return False
        try:
            return bool(json.loads((Path(model_dir) / "manifest.json").read_text()) != loaded)
        except (OSError, ValueError):
            return True  # gone or unreadable: a reload tries, and says why it cannot

    async def _reload_model(
        self, new: Settings, changed_fields: list[str]
    ) -> tuple[ModelOutcome, str | None]:
        engine = self.app.state.engine
        resource = f"model:{new.model}"
        previous = engine.describe()
        try:
            await engine.reload(engine.settings.model_copy(update={f: getattr(new, f) for f in MODEL_FIELDS}))
        except ModelLoadFailure as exc:
            self._audit().record(
                user_id="system",
                action="model.reload",
                resource=resource,
                result="failure",
                details={
                    "code": exc.code,
                    "error": exc.message[:2000],
                    "changed_fields": changed_fields,
                    "still_serving": previous,
                },
            )
            return "failed", f"model reload refused ({exc.code}); still serving {previous}"
        await self.app.state.duties.watch_model()  # the integrity loop follows the new files
        self.app.state.duties.model_swapped()
        self._audit().record(
            user_id="system",
            action="model.reload",
            resource=resource,
            result="success",
            details={
                "changed_fields": changed_fields,
                "previous": previous,
                "now": engine.describe(),
                "load_seconds": round(engine.load_seconds or 0.0, 3),
                "signature_verified": bool(new.manifest_signing_key),
            },
        )
        return "reloaded", None
