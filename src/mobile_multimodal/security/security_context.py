"""`SecurityContext`: the per-app security state and the decisions made on each request.

Holds the database, audit log, rate limiter and anomaly detector, and implements what the
FastAPI dependencies in :mod:`.auth_dependencies` and the middleware in :mod:`.anomaly_middleware`
do: authenticate a key, enforce its rate limit, decide admin access, and turn every refusal into
the metrics (``auth_failures_total{reason}``, ``security_events_total{event_type}``), an audit
event with the source IP, and a :class:`SecurityError` carrying the error code. Failed
authentications are audited through a per-source throttle (auth_failure_throttle.py): every
one is counted, the first few per window get a row each, the rest one summary row
(:meth:`SecurityContext.flush_suppressed_audits`). Successful authentications are audited too
(``auth.success``), once per key per ``MOBILE_MM_AUTH_SUCCESS_AUDIT_INTERVAL_S``.

Example::

    ctx = SecurityContext(settings, db)
    principal = ctx.authenticate({"x-api-key": key}, source_ip="10.0.0.7", resource="POST /inference")
    ctx.check_rate_limit(principal, source_ip="10.0.0.7", resource="POST /inference")
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import NoReturn

from mobile_multimodal.errors import ErrorCode
from mobile_multimodal.observability import metrics
from mobile_multimodal.security.anomaly import Anomaly, AnomalyDetector
from mobile_multimodal.security.api_keys import looks_like_key, lookup_key, touch_key
from mobile_multimodal.security.audit import AuditLog, EventType, count_security_event
from mobile_multimodal.security.auth_failure_throttle import FailureAuditThrottle, SuppressedFailures
from mobile_multimodal.security.principal import ANONYMOUS, Principal
from mobile_multimodal.security.ratelimit import RateLimiter
from mobile_multimodal.security.redis_ratelimit import build_rate_limiter
from mobile_multimodal.security.security_errors import SecurityError
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# auth_failures_total{reason} values, one per error code.
_REASONS = {
    ErrorCode.MISSING_API_KEY: "missing",
    ErrorCode.INVALID_API_KEY: "invalid",
    ErrorCode.REVOKED_API_KEY: "revoked",
}


def extract_key(headers: Mapping[str, str]) -> str | None:
    """The API key from ``X-API-Key`` or ``Authorization: Bearer``; None if neither is sent.

    ``headers`` must be case-insensitive (Starlette's are) or use lower-case names.
    """
    api_key = (headers.get("x-api-key") or "").strip()
    if api_key:
        return api_key
    auth = (headers.get("authorization") or "").strip()
    if not auth:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise SecurityError(
            ErrorCode.INVALID_API_KEY,
            "send the key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        )
    return value.strip()


class SecurityContext:
    """Security state for one app; thread-safe (the auth dependencies call it from worker threads)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        audit: AuditLog | None = None,
        limiter: RateLimiter | None = None,
        detector: AnomalyDetector | None = None,
        touch_interval_s: float = 60.0,
        failure_audits: FailureAuditThrottle | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit or AuditLog(db)
        self.limiter = limiter or build_rate_limiter(settings)
        self.detector = detector or AnomalyDetector.from_settings(settings)
        self.touch_interval_s = touch_interval_s
        self.failure_audits = failure_audits or FailureAuditThrottle(
            settings.auth_failure_audit_limit, settings.auth_failure_audit_window_s
        )
        self._last_touch: dict[str, float] = {}
        self._last_limited_audit: dict[str, float] = {}
        self._last_success_audit: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def auth_required(self) -> bool:
        return self.settings.auth == "required"

    # --- authentication ----------------------------------------------------------------------
    def authenticate(
        self, headers: Mapping[str, str], *, source_ip: str, resource: str, admin_route: bool = False
    ) -> Principal:
        """The principal for the request's key; raises SecurityError (401) after recording why."""
        try:
            key = extract_key(headers)
        except SecurityError as exc:
            self._refuse(
                exc.code, exc.message, source_ip=source_ip, resource=resource, admin_route=admin_route
            )
        if key is None:
            self._refuse(
                ErrorCode.MISSING_API_KEY,
                "this route needs an API key: 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(create one with `mobile-mm keys create --user NAME`)",
                source_ip=source_ip,
                resource=resource,
                admin_route=admin_route,
            )
        record = lookup_key(self.db, key) if looks_like_key(key) else None
        if record is None:
            self._refuse(
                ErrorCode.INVALID_API_KEY,
                "the API key is not valid",
                source_ip=source_ip,
                resource=resource,
                admin_route=admin_route,
            )
        if record.revoked_at is not None:
            self._refuse(
                ErrorCode.REVOKED_API_KEY,
                f"API key {record.id} was revoked; ask for a new one",
                source_ip=source_ip,
                resource=resource,
                admin_route=admin_route,
                user_id=record.user_id,
                key_id=record.id,
            )
        self._maybe_touch(record.id)
        self._maybe_audit_success(record.id, record.user_id, source_ip=source_ip, resource=resource)
        return Principal(record.user_id, record.key_type, record.id, record.is_admin)

    def _maybe_audit_success(self, key_id: str, user_id: str, *, source_ip: str, resource: str) -> None:
        # One row per key per MOBILE_MM_AUTH_SUCCESS_AUDIT_INTERVAL_S, not one per request: the
        # trail says who used which key from where and when, without a write on every request.
        now = time.monotonic()
        with self._lock:
            last = self._last_success_audit.get(key_id)
            if last is not None and now - last < self.settings.auth_success_audit_interval_s:
                return
            self._last_success_audit[key_id] = now
        self.audit.record(
            user_id=user_id,
            action="auth.success",
            resource=resource,
            result="success",
            source_ip=source_ip,
            details={"key_id": key_id, "audited_once_per_s": self.settings.auth_success_audit_interval_s},
        )

    def _refuse(
        self,
        code: ErrorCode,
        message: str,
        *,
        source_ip: str,
        resource: str,
        admin_route: bool,
        user_id: str = "anonymous",
        key_id: str | None = None,
    ) -> NoReturn:
        reason = _REASONS[code]
        metrics.AUTH_FAILURES.labels(reason).inc()
        count_security_event(EventType.AUTHENTICATION_FAILURE)
        if admin_route:
            count_security_event(EventType.UNAUTHORIZED)
        admit, closed_window = self.failure_audits.admit(source_ip, reason, resource)
        if closed_window is not None:
            self._record_suppressed(closed_window)
        if admit:
            details = {"code": code.value, "reason": reason, "admin_route": admin_route}
            if key_id is not None:
                details["key_id"] = key_id
            self.audit.record(
                user_id=user_id,
                action="auth.authenticate",
                resource=resource,
                result="failure",
                source_ip=source_ip,
                details=details,
            )
        raise SecurityError(code, message)

    def flush_suppressed_audits(self, *, final: bool = False) -> int:
        """Write one summary row per source whose throttle window closed with failures not
        audited one by one (every window with ``final``, at shutdown); returns how many."""
        closed = self.failure_audits.closed_windows(final=final)
        for window in closed:
            self._record_suppressed(window)
        return len(closed)

    def _record_suppressed(self, window: SuppressedFailures) -> None:
        self.audit.record(
            user_id="anonymous",
            action="auth.authenticate.suppressed",
            resource=max(window.resources, key=window.resources.__getitem__),
            result="failure",
            source_ip=window.source_ip,
            details={
                "suppressed": window.count,
                "reasons": window.reasons,
                "resources": window.resources,
                "window_s": window.window_s,
                "first_at": window.first_at,
                "last_at": window.last_at,
                "audited_per_window": self.failure_audits.limit,
            },
        )

    def _maybe_touch(self, key_id: str) -> None:
        # last_used_at is a write: at most one per key per touch_interval_s, not one per request.
        now = time.monotonic()
        with self._lock:
            last = self._last_touch.get(key_id)
            if last is not None and now - last < self.touch_interval_s:
                return
            self._last_touch[key_id] = now
        touch_key(self.db, key_id)

    # --- rate limits -------------------------------------------------------------------------
    def check_rate_limit(self, principal: Principal, *, source_ip: str, resource: str) -> None:
        """Take a token from the key's bucket, or raise 429 with Retry-After (whole seconds)."""
        if principal.key_id is None:
            return  # anonymous (auth disabled): no key to meter
        wait_s = self.limiter.acquire(principal.key_id, principal.user_type)
        if wait_s <= 0:
            return
        count_security_event(EventType.RATE_LIMITED)
        retry_after = max(1, math.ceil(wait_s))
        # Every refusal is counted; the audit trail gets one row per key per minute of throttling,
        # so a client hammering its limit cannot turn into a database write storm.
        now = time.monotonic()
        with self._lock:
            last = self._last_limited_audit.get(principal.key_id)
            audit_now = last is None or now - last >= 60.0
            if audit_now:
                self._last_limited_audit[principal.key_id] = now
        if audit_now:
            self.audit.record(
                user_id=principal.user_id,
                action="rate_limit",
                resource=resource,
                result="failure",
                source_ip=source_ip,
                details={
                    "key_id": principal.key_id,
                    "tier": principal.user_type,
                    "retry_after_s": retry_after,
                },
            )
        raise SecurityError(
            ErrorCode.RATE_LIMITED,
            f"rate limit of the {principal.user_type} tier exceeded; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    # --- admin -------------------------------------------------------------------------------
    def authorize_admin(self, headers: Mapping[str, str], *, source_ip: str, resource: str) -> Principal:
        """An admin principal, or raise 401/403 after counting an ``unauthorized`` event.

        With ``MOBILE_MM_AUTH=disabled`` there are no keys to check, so admin routes answer
        only loopback clients; from anywhere else they need auth enabled and an admin key.
        """
        if not self.auth_required:
            if source_ip in LOOPBACK:
                principal = Principal("anonymous", "free", None, is_admin=True)
            else:
                self._forbid(
                    "admin routes answer other hosts only with MOBILE_MM_AUTH=required and an admin key",
                    ANONYMOUS,
                    source_ip=source_ip,
                    resource=resource,
                )
        else:
            principal = self.authenticate(headers, source_ip=source_ip, resource=resource, admin_route=True)
            if not principal.is_admin:
                self._forbid(
                    f"API key {principal.key_id} is not an admin key (`mobile-mm keys create --admin`)",
                    principal,
                    source_ip=source_ip,
                    resource=resource,
                )
        self.audit.record(
            user_id=principal.user_id,
            action="admin.access",
            resource=resource,
            result="success",
            source_ip=source_ip,
            details={"key_id": principal.key_id},
        )
        return principal

    def _forbid(self, message: str, principal: Principal, *, source_ip: str, resource: str) -> NoReturn:
        count_security_event(EventType.UNAUTHORIZED)
        self.audit.record(
            user_id=principal.user_id,
            action="admin.access",
            resource=resource,
            result="failure",
            source_ip=source_ip,
            details={"code": ErrorCode.FORBIDDEN.value, "key_id": principal.key_id},
        )
        raise SecurityError(ErrorCode.FORBIDDEN, message)

    # --- anomalies ---------------------------------------------------------------------------
    def report_anomaly(self, anomaly: Anomaly, *, resource: str, user_id: str = "anonymous") -> None:
        """Count and audit an anomaly found by the detector (or by serving's own checks)."""
        count_security_event(EventType.ANOMALOUS_REQUEST)
        self.audit.record(
            user_id=user_id,
            action="request.anomaly",
            resource=resource,
            result="failure",
            source_ip=anomaly.source_ip,
            details={"rule": anomaly.rule, "detail": anomaly.detail},
        )
