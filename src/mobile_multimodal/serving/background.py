"""The server's background duties: configuration record, model integrity loop, backup metrics,
live model quality (canary, shadow comparison).

Started by the app's lifespan, stopped at shutdown (before the database is closed):

* at start, :func:`~mobile_multimodal.security.record_config_state`: a changed configuration is
  ``config_changes_total{source="startup"}`` +1, a ``config_change`` security event and an audit row;
* once the model has loaded, an :class:`~mobile_multimodal.security.IntegrityMonitor` re-hashes
  the model's files against its manifest every ``MOBILE_MM_INTEGRITY_CHECK_INTERVAL_S``
  (``model_integrity_ok``, ``model_integrity_last_check_timestamp_seconds``, and per tampering
  incident ``model_integrity_failures_total``, ``security_events_total{event_type="model_tampering"}``
  and an audit row);
* failed authentications the audit throttle held back (security/auth_failure_throttle.py) are
  written as one summary row per source every ``MOBILE_MM_AUTH_FAILURE_AUDIT_WINDOW_S``, and at
  shutdown;
* :class:`~mobile_multimodal.store.BackupMetricsSync` mirrors the ``backup_runs`` table into
  ``backup_last_success_timestamp_seconds`` / ``backup_failures_total`` every
  ``MOBILE_MM_BACKUP_SYNC_INTERVAL_S``, so a ``mobile-mm db backup`` run by cron (another
  process, never scraped) reaches this server's ``/metrics``; with ``MOBILE_MM_BACKUP_INTERVAL_S``
  > 0 it also backs up by itself (at once when the newest backup is that old, as on a fresh
  deployment) and prunes old backups;
* the retention cleanup (store/retention.py) at start and every ``MOBILE_MM_CLEANUP_INTERVAL_S``
  removes audit rows, rotated logs, profiles and backups past ``MOBILE_MM_RETENTION_DAYS``, and
  audits each run (``retention.cleanup`` with the counts);
* once the model has loaded, live quality (``canary.py``, ``shadow.py``): the canary set is scored
  at start-up and every ``MOBILE_MM_CANARY_INTERVAL_S``, and ``MOBILE_MM_SHADOW_SAMPLE_RATE`` of
  the requests are replayed through the fp32 reference; both run on the model thread in small
  slices between requests (``background_slices.py``), never ahead of one.

**Tampering found at run time: the service keeps serving, and says so loudly.** A model file
changed or deleted, or ``manifest.json`` rewritten (the monitor checks it against the manifest
that was loaded, so weights and manifest replaced together are caught too): ``/health`` and
``/model/health`` turn 503 with ``MODEL_INTEGRITY_FAILED`` naming the files,
``model_integrity_ok`` is 0 and ModelTampering pages, ``model_integrity_failures_total`` and
``security_events_total{event_type="model_tampering"}`` count the incident once, the audit trail
names the files; ``/ready`` stays 200 and inference goes on. Why:
the weights in memory were checked against the manifest when they were loaded and are the
process's own copies (``load_state_dict`` copies out of the safetensors mapping; the serving
tests check that answers do not change after a byte of the file flips), so the service still
answers with the released model. A change on disk only matters at the next load, and the
loader refuses files that do not match (``MODEL_INTEGRITY_FAILED``), so a restart cannot
serve them either. Refusing traffic instead would turn one written byte into an outage of
every replica sharing the model volume, a kill switch for whoever can write there, while
protecting nothing. The operator restores the files from a trusted copy (runbook
ModelTampering); the next check clears ``/health`` and audits the recovery, no restart needed.
A reload (SIGHUP, reload.py) meanwhile tries to load the files on disk, is refused by the same
checks (and, with ``MOBILE_MM_MANIFEST_SIGNING_KEY``, by the signature), and keeps the verified
model serving; a *validly signed* new model written in place is how a model is replaced without
a restart: SIGHUP loads it, and the integrity loop then watches the new files.

The model load is audited (``model.load``, success or failure, with what was loaded).

Under ``--workers N`` (see :mod:`.leader`) every worker runs its own integrity check, so each
worker's ``/health`` is true, but only the leader records the configuration, counts and audits
tampering, and syncs backups: the summed counters then move once per event, not N times, and
the server does not write N backups or N ``config_state`` rows.

Example::

    duties = BackgroundDuties(settings, engine, database, security)
    await duties.start()
    duties.integrity_problem()     # None, or why /health reports the model unhealthy
    await duties.stop()
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from mobile_multimodal.security import AuditLog, IntegrityMonitor, SecurityContext, record_config_state
from mobile_multimodal.serving.background_slices import BackgroundSlices
from mobile_multimodal.serving.canary import CanaryEvaluator
from mobile_multimodal.serving.engine import InferenceEngine
from mobile_multimodal.serving.leader import WorkerLeader
from mobile_multimodal.serving.reference import ReferenceModel
from mobile_multimodal.serving.retention_cleanup import run_retention_cleanup
from mobile_multimodal.serving.shadow import ShadowComparator
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import BackupMetricsSync, Database
from mobile_multimodal.store.retention import RetentionPolicy

log = logging.getLogger(__name__)


class BackgroundDuties:
    """Owns the integrity monitor and the backup sync task; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        engine: InferenceEngine,
        database: Database | None,
        security: SecurityContext | None,
        leader: WorkerLeader | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.database = database
        # Without a database there is no security context; audit events then go to the log only.
        self.audit = security.audit if security is not None else AuditLog(None)
        self.security = security
        self.leader = leader or WorkerLeader.for_this_process()
        self.monitor: IntegrityMonitor | None = None
        self.canary: CanaryEvaluator | None = None
        self.shadow: ShadowComparator | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._canary_task: asyncio.Task[None] | None = None
        self._shadow_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Record the configuration, then start the loops; returns at once after that."""
        self.loop = asyncio.get_running_loop()  # where another thread may schedule a duty's work
        if self.database is not None and self.leader.is_leader():
            await self._record_config(self.database)
        self._spawn(self._audit_load_then_watch(), "start-integrity-monitor")
        self._spawn(self._watch_quality(), "start-live-quality")
        if self.database is not None:
            self._spawn(self._sync_backups(self.database), "backup-metrics-sync")
            if self.settings.cleanup_interval_s > 0:
                cleanup = run_retention_cleanup(
                    self.database, self.settings, self.audit, self.leader.is_leader
                )
                self._spawn(cleanup, "retention-cleanup")
        if self.security is not None:
            self._spawn(self._flush_suppressed_audits(self.security), "suppressed-audit-flush")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # a crash was logged already
        self._tasks.clear()
        if self.security is not None:  # what the throttle still holds goes to the trail now
            await asyncio.to_thread(self.security.flush_suppressed_audits, final=True)
        if self.monitor is not None:
            await self.monitor.stop()
        self.leader.release()

    def integrity_report(self) -> dict[str, Any]:
        """``/model/health``'s integrity section: the last check's outcome, as ``/health`` sees it."""
        result = self.monitor.last_result if self.monitor is not None else None
        problem = self.integrity_problem()
        status = "unchecked" if result is None else "unhealthy" if problem else "healthy"
        last = datetime.fromtimestamp(result.timestamp, UTC).isoformat() if result is not None else None
        return {
            "status": status,
            "signature_verified": bool(self.engine.settings.manifest_signing_key) and self.engine.ready,
            "last_check": last,
            "message": problem,
        }

    def integrity_problem(self) -> str | None:
        """Why the model's files are not trusted (for /health), or None when the last check passed."""
        result = self.monitor.last_result if self.monitor is not None else None
        if result is None or result.ok:
            return None
        files = ", ".join(f"{m.path} ({m.reason})" for m in result.mismatches)
        return (
            f"model files differ from their manifest: {files}. Still serving the weights verified at "
            "load; restore the files from a trusted copy (runbook ModelTampering)"
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)
        return task

    async def _record_config(self, database: Database) -> None:
        try:
            change = await asyncio.to_thread(record_config_state, database, self.settings, audit=self.audit)
        except SQLAlchemyError as exc:  # a database hiccup must not stop the service from starting
            log.error("configuration state not recorded: %s", exc)
            return
        if change.changed:
            log.warning("configuration changed since the last start: %s", ", ".join(change.changed_fields))

    async def _audit_load_then_watch(self) -> None:
        """Once the model has loaded (or failed to): audit the load, then start the integrity loop."""
        await self.engine.wait_ready()
        if self.leader.is_leader():
            await asyncio.to_thread(self._audit_load)
        await self.watch_model()

    def _audit_load(self) -> None:
        engine = self.engine
        resource = f"model:{self.settings.model}"
        if engine.ready:
            details = {
                **engine.describe(),
                "load_seconds": round(engine.load_seconds or 0.0, 3),
                "signature_verified": bool(self.settings.manifest_signing_key),
            }
            self.audit.record(
                user_id="system", action="model.load", resource=resource, result="success", details=details
            )
        elif engine.state == "failed" and engine.error is not None:
            details = {"code": engine.error.code, "error": engine.error.message[:2000]}
            self.audit.record(
                user_id="system", action="model.load", resource=resource, result="failure", details=details
            )

    async def watch_model(self) -> None:
        """(Re)start the integrity loop on the served model's files and manifest (at start, and
        after a reload swapped the model); nothing to check if the model failed to load."""
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None
        model = self.engine.model
        if not self.engine.ready or model is None:
            return
        model_dir = getattr(model, "model_dir", None)
        manifest = getattr(model, "manifest", None) or {}
        files = manifest.get("files")
        if model_dir is None or not files:
            log.warning("no integrity checks: the model was not loaded from a directory with a manifest")
            return
        try:
            self.monitor = IntegrityMonitor(
                model_dir,
                [*files, await asyncio.to_thread(loaded_manifest_entry, Path(model_dir), manifest)],
                model_type=self.settings.model_type,
                audit=self.audit,
                reports_incidents=self.leader.is_leader,
            )
        except ValueError as exc:
            log.error("no integrity checks: invalid manifest in %s: %s", model_dir, exc)
            return
        self.monitor.start(self.engine.settings.integrity_check_interval_s)

    def model_swapped(self) -> None:
        """After a reload swapped the model: the fp32 reference and its canary scores belonged to
        the old one (loaded again on first use), as did the shadow's queue and agreement window;
        shadowing may now apply (a quantized model); and the new model's canary runs now, as at
        start-up, not an interval later."""
        if self.canary is None or self.shadow is None:
            # not started: the start-up load failed, and this reload is the first good model
            if not any(t.get_name() == "start-live-quality" and not t.done() for t in self._tasks):
                self._spawn(self._watch_quality(), "start-live-quality")
            return
        if self._canary_task is not None:  # a run on the old model would record its scores
            self._canary_task.cancel()
        reference = ReferenceModel(self.settings)
        self.canary.reference = self.shadow.reference = reference
        self.canary.reference_scores = None
        self.shadow.forget()
        self.shadow.enabled = self.settings.shadow_sample_rate > 0
        if self.shadow.enabled and (self._shadow_task is None or self._shadow_task.done()):
            self._shadow_task = self._spawn(self.shadow.run_forever(), "shadow-comparison")
        self._canary_task = self._spawn(self.canary.run_forever(), "canary")

    def apply_settings(self, settings: Settings, changed: list[str]) -> list[str]:
        """A reload's live settings (serving/reload.py); returns the changed ones it applied."""
        applied = []
        self.settings = settings
        if "shadow_sample_rate" in changed and self.shadow is not None:
            self.shadow.settings = settings
            self.shadow.rate = settings.shadow_sample_rate
            self.shadow.enabled = settings.shadow_sample_rate > 0
            # a loop that ended (rate 0 at start) starts again; it turns itself off for fp32
            if self.shadow.enabled and (self._shadow_task is None or self._shadow_task.done()):
                self._shadow_task = self._spawn(self.shadow.run_forever(), "shadow-comparison")
            applied.append("shadow_sample_rate")
        if {"canary_interval_s", "canary_size"} & set(changed) and self.canary is not None:
            self.canary.settings = settings
            if "canary_size" in changed:
                self.canary.canary = None  # rendered again at the next run, at the new size
            if self._canary_task is not None:
                self._canary_task.cancel()
            self._canary_task = self._spawn(self.canary.run_forever(), "canary")
            applied += [f for f in ("canary_interval_s", "canary_size") if f in changed]
        if "integrity_check_interval_s" in changed and self.monitor is not None:
            self.monitor.restart(settings.integrity_check_interval_s)
            applied.append("integrity_check_interval_s")
        return applied

    async def _watch_quality(self) -> None:
        """Once the model is ready: the canary loop and the shadow comparator (each its own task)."""
        await self.engine.wait_ready()
        if not self.engine.ready:
            return
        slices = BackgroundSlices(self.engine)
        reference = ReferenceModel(self.settings)
        self.canary = CanaryEvaluator(self.settings, self.engine, slices, reference)
        self.shadow = ShadowComparator(self.settings, self.engine, slices, reference)
        self.engine.after_success.append(self.shadow.offer)
        self._canary_task = self._spawn(self.canary.run_forever(), "canary")
        self._shadow_task = self._spawn(self.shadow.run_forever(), "shadow-comparison")

    async def _flush_suppressed_audits(self, security: SecurityContext) -> None:
        interval = self.settings.auth_failure_audit_window_s
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(security.flush_suppressed_audits)

    async def _sync_backups(self, database: Database) -> None:
        interval = self.settings.backup_sync_interval_s
        while not self.leader.is_leader():  # another worker syncs; take over if it dies
            await asyncio.sleep(interval)
        await BackupMetricsSync(database).run_forever(
            interval_s=interval,
            backup_dir=self.settings.resolved_backup_dir,
            backup_interval_s=self.settings.backup_interval_s,
            retention=RetentionPolicy.from_settings(self.settings),
        )


def loaded_manifest_entry(model_dir: Path, loaded: dict[str, Any]) -> dict[str, Any]:
    """An integrity entry for ``manifest.json`` itself: its bytes now when they still say what
    was loaded, else an entry the file cannot match (it has changed since the load). So a
    manifest rewritten while serving (with new weights, or a new signature) is an incident too."""
    path = model_dir / "manifest.json"
    try:
        data = path.read_bytes()
        if json.loads(data) == loaded:
            return {"path": "manifest.json", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    except (OSError, ValueError):
        pass
    expected = json.dumps(loaded, sort_keys=True).encode()
    return {"path": "manifest.json", "bytes": len(expected), "sha256": hashlib.sha256(expected).hexdigest()}


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=task.exception())
