"""Model tampering detection: re-hash the model's files against its manifest, periodically.

The manifest (``manifest.json`` next to the weights) lists ``files: [{path, bytes, sha256}]``.
:meth:`IntegrityMonitor.check` re-reads every listed file and reports each one that is missing,
has another size, or another sha256. :meth:`IntegrityMonitor.run` repeats that every
``MOBILE_MM_INTEGRITY_CHECK_INTERVAL_S`` in a worker thread (hashing is blocking I/O) and
publishes the outcome: ``model_integrity_ok`` (1/0) and ``model_integrity_last_check_timestamp_seconds``
on every check, and per *incident* ``model_integrity_failures_total{model_type}`` +1,
``security_events_total{event_type="model_tampering"}`` +1 and an audit event naming the files.
An incident is a change of the files' state: good -> bad, or bad -> bad in another way (another
file, another hash). Re-finding the same modification every interval is not a new event: it
would make a one-time tampering look like a steady stream in the counters and flood the audit
trail (``model_integrity_ok`` stays 0 meanwhile, and the alert fires on it). Restoring the
files is audited too (``result="success"``, ``recovered``).

Under ``mobile-mm serve --workers N`` every worker checks (each answers ``/health``), but only
the one for which ``reports_incidents()`` is true counts and audits, so the summed counters
move by one per incident, not by N.

Example (the app's lifespan)::

    monitor = IntegrityMonitor(model.model_dir, model.manifest["files"], audit=security.audit)
    monitor.start(settings.integrity_check_interval_s)      # an asyncio task
    ...
    await monitor.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.observability import metrics
from mobile_multimodal.security.audit import AuditLog, EventType, count_security_event

log = logging.getLogger(__name__)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ManifestFile:
    path: str  # relative to the model directory
    bytes: int
    sha256: str


@dataclass(frozen=True)
class FileMismatch:
    path: str
    reason: Literal["missing", "size", "sha256", "unreadable"]
    expected_bytes: int
    actual_bytes: int | None
    expected_sha256: str
    actual_sha256: str | None


@dataclass
class IntegrityResult:
    ok: bool
    checked_files: int
    mismatches: list[FileMismatch] = field(default_factory=list)
    duration_s: float = 0.0
    timestamp: float = 0.0  # unix time the check finished

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def state(self) -> frozenset[tuple[str, str, int | None, str | None]]:
        """What the files look like now, as far as they differ from the manifest (empty when ok)."""
        return frozenset((m.path, m.reason, m.actual_bytes, m.actual_sha256) for m in self.mismatches)


class IntegrityMonitor:
    """Checks ``model_dir`` against ``manifest_files`` (dicts or :class:`ManifestFile`)."""

    def __init__(
        self,
        model_dir: Path | str,
        manifest_files: Sequence[Mapping[str, Any] | ManifestFile],
        *,
        model_type: str = "multimodal",
        audit: AuditLog | None = None,
        reports_incidents: Callable[[], bool] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.files = [self._validate(f) for f in manifest_files]
        if not self.files:
            raise ValueError("the manifest lists no files: there is nothing to check integrity against")
        self.model_type = model_type
        self.audit = audit
        # False in the workers of `serve --workers N` that do not lead (see serving/leader.py).
        self.reports_incidents = reports_incidents or (lambda: True)
        self.last_result: IntegrityResult | None = None
        self._task: asyncio.Task[None] | None = None

    def _validate(self, entry: Mapping[str, Any] | ManifestFile) -> ManifestFile:
        f = (
            entry
            if isinstance(entry, ManifestFile)
            else ManifestFile(
                path=str(entry["path"]), bytes=int(entry["bytes"]), sha256=str(entry["sha256"]).lower()
            )
        )
        if not _SHA256_RE.match(f.sha256):
            raise ValueError(f"manifest entry {f.path!r}: sha256 must be 64 hex characters")
        # a manifest must not make us hash (or vouch for) files outside the model directory
        if not (self.model_dir / f.path).resolve().is_relative_to(self.model_dir):
            raise ValueError(f"manifest entry {f.path!r} points outside {self.model_dir}")
        return f

    def check(self) -> IntegrityResult:
        """Re-hash every listed file; no side effects besides ``last_result``."""
        start = time.perf_counter()
        mismatches: list[FileMismatch] = []
        for f in self.files:
            path = self.model_dir / f.path
            try:
                size = path.stat().st_size
                if size != f.bytes:
                    mismatches.append(FileMismatch(f.path, "size", f.bytes, size, f.sha256, None))
                    continue
                digest = sha256_file(path)
            except FileNotFoundError:
                mismatches.append(FileMismatch(f.path, "missing", f.bytes, None, f.sha256, None))
                continue
            except OSError as exc:
                log.warning("cannot read %s for the integrity check: %s", path, exc)
                mismatches.append(FileMismatch(f.path, "unreadable", f.bytes, None, f.sha256, None))
                continue
            if digest != f.sha256:
                mismatches.append(FileMismatch(f.path, "sha256", f.bytes, size, f.sha256, digest))
        result = IntegrityResult(
            ok=not mismatches,
            checked_files=len(self.files),
            mismatches=mismatches,
            duration_s=time.perf_counter() - start,
            timestamp=time.time(),
        )
        self.last_result = result
        return result

    def check_and_report(self) -> IntegrityResult:
        """:meth:`check`, publish the gauges, and count + audit a new incident (module docstring)."""
        previous = self.last_result
        result = self.check()
        metrics.MODEL_INTEGRITY_LAST_CHECK.set(result.timestamp)
        metrics.MODEL_INTEGRITY_OK.set(1 if result.ok else 0)
        resource = f"model:{self.model_dir}"
        if not result.ok:
            if previous is not None and not previous.ok and previous.state() == result.state():
                return result  # the incident already reported, found again
            log.error("model integrity check failed: %s", [(m.path, m.reason) for m in result.mismatches])
            if not self.reports_incidents():
                return result
            metrics.MODEL_INTEGRITY_FAILURES.labels(self.model_type).inc()
            count_security_event(EventType.MODEL_TAMPERING)
            if self.audit is not None:
                self.audit.record(
                    user_id="system",
                    action="model.integrity_check",
                    resource=resource,
                    result="failure",
                    details={"mismatches": [asdict(m) for m in result.mismatches]},
                )
        elif previous is not None and not previous.ok:
            # the files match again (restored from a good copy): close the incident in the trail
            log.warning("model files match their manifest again: %s", self.model_dir)
            if self.audit is not None and self.reports_incidents():
                self.audit.record(
                    user_id="system",
                    action="model.integrity_check",
                    resource=resource,
                    result="success",
                    details={"checked_files": result.checked_files, "recovered": True},
                )
        return result

    async def run(self, interval_s: float) -> None:
        """Check now, then every ``interval_s`` seconds, until cancelled."""
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        while True:
            try:
                await asyncio.to_thread(self.check_and_report)
            except Exception:  # the loop must outlive one bad check (e.g. a DB error in the audit)
                log.exception("integrity check crashed; retrying in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

    def start(self, interval_s: float) -> asyncio.Task[None]:
        """Run :meth:`run` as a task on the running loop; returns the task."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the integrity monitor is already running")
        self._task = asyncio.get_running_loop().create_task(self.run(interval_s), name="model-integrity")
        return self._task

    def restart(self, interval_s: float) -> asyncio.Task[None]:
        """Check again at another interval (a configuration reload); the state found so far stays."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        return self.start(interval_s)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
