"""The checks behind ``GET /health``: database, model, memory and disk, each against a threshold.

The answer is the operator's guide's JSON (status, timestamp, version, uptime_seconds, checks,
errors[{component, message, code}]), plus ``details`` with the measured numbers. The service is
``unhealthy`` when any check is, and the route then answers HTTP 503 (a health endpoint that
always says 200 tells a load balancer nothing).

Thresholds come from settings: ``MOBILE_MM_HEALTH_MEMORY_MAX_PERCENT`` (system memory in use),
``MOBILE_MM_HEALTH_DISK_MIN_FREE_PERCENT`` (free space where the data directory lives) and
``MOBILE_MM_HEALTH_DATABASE_MAX_LATENCY_MS`` (a ``SELECT 1`` round trip).

Example::

    checker = HealthChecker(settings, database=db, model_status=lambda: (None, "ready"))
    report = checker.run()          # blocking (it pings the database): call it off the event loop
    report["status"]                # "healthy" | "unhealthy"
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psutil

from mobile_multimodal.errors import ErrorCode
from mobile_multimodal.observability.identity import service_version
from mobile_multimodal.settings import Settings

# () -> (error code or None when the model is healthy, a message for the operator)
ModelStatus = Callable[[], tuple[str | None, str]]


class Pingable(Protocol):
    def ping(self) -> float: ...


@dataclass
class CheckResult:
    healthy: bool
    details: dict[str, float | str | None] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None


def check_database(database: Pingable | None, max_latency_ms: float, unavailable_reason: str) -> CheckResult:
    if database is None:
        return CheckResult(False, {}, ErrorCode.DATABASE_UNAVAILABLE, unavailable_reason)
    try:
        latency_ms = database.ping() * 1000
    except Exception as exc:  # every driver error means the same thing here: not usable
        return CheckResult(False, {}, ErrorCode.DATABASE_UNAVAILABLE, str(exc))
    details: dict[str, float | str | None] = {"database_latency_ms": round(latency_ms, 3)}
    if latency_ms > max_latency_ms:
        return CheckResult(
            False,
            details,
            ErrorCode.DATABASE_UNAVAILABLE,
            f"database answered in {latency_ms:.0f} ms (threshold {max_latency_ms:.0f} ms)",
        )
    return CheckResult(True, details)


def check_memory(max_percent: float) -> CheckResult:
    vm = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    details: dict[str, float | str | None] = {
        "memory_used_percent": round(vm.percent, 2),
        "process_memory_mb": round(rss / 2**20, 1),
    }
    if vm.percent >= max_percent:
        return CheckResult(
            False,
            details,
            ErrorCode.MEMORY_HIGH,
            f"system memory is {vm.percent:.1f}% used (threshold {max_percent:.1f}%)",
        )
    return CheckResult(True, details)


def _existing_ancestor(path: Path) -> Path:
    """The data directory may not exist yet; its filesystem is that of its nearest ancestor."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(path: Path, min_free_percent: float) -> CheckResult:
    usage = shutil.disk_usage(_existing_ancestor(path))
    free_percent = 100.0 * usage.free / usage.total if usage.total else 0.0
    # The path stays out of the answer: /health needs no key, and where the data lives is the
    # operator's business (they configured it), not a caller's.
    details: dict[str, float | str | None] = {"disk_free_percent": round(free_percent, 2)}
    if free_percent < min_free_percent:
        return CheckResult(
            False,
            details,
            ErrorCode.DISK_LOW,
            f"{free_percent:.1f}% free on the data directory's filesystem "
            f"(threshold {min_free_percent:.1f}%, MOBILE_MM_DATA_DIR)",
        )
    return CheckResult(True, details)


def check_model(model_status: ModelStatus) -> CheckResult:
    code, message = model_status()
    if code is None:
        return CheckResult(True, {"model_state": message})
    return CheckResult(False, {"model_state": code.lower()}, code, message)


class HealthChecker:
    """Runs the four checks and builds the guide's JSON."""

    def __init__(
        self,
        settings: Settings,
        *,
        database: Pingable | None,
        model_status: ModelStatus,
        database_unavailable_reason: str = "no database is configured",
        started_at: float | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.database_unavailable_reason = database_unavailable_reason
        self.model_status = model_status
        self.started_at = started_at if started_at is not None else time.monotonic()

    def uptime_seconds(self) -> float:
        return round(time.monotonic() - self.started_at, 3)

    def run(self) -> dict[str, Any]:
        """Blocking: pings the database. Returns the /health body (see the module doc)."""
        s = self.settings
        results = {
            "database": check_database(
                self.database, s.health_database_max_latency_ms, self.database_unavailable_reason
            ),
            "model": check_model(self.model_status),
            "memory": check_memory(s.health_memory_max_percent),
            "disk": check_disk(s.data_dir, s.health_disk_min_free_percent),
        }
        details: dict[str, float | str | None] = {}
        for r in results.values():
            details.update(r.details)
        healthy = all(r.healthy for r in results.values())
        return {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "version": service_version(),
            "uptime_seconds": self.uptime_seconds(),
            "checks": {name: "healthy" if r.healthy else "unhealthy" for name, r in results.items()},
            "errors": [
                {"component": name, "message": r.message or "", "code": str(r.code)}
                for name, r in results.items()
                if not r.healthy
            ],
            "details": details,
        }
