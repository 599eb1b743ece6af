"""Security: API keys, the auth dependency, rate limits, anomaly rules, the audit trail,
model integrity (tampering) checks and configuration-change records.

Example::

    from mobile_multimodal.security import install_security, require_api_key, Principal
    security = install_security(app, settings, db)
    app.include_router(router, dependencies=[Depends(require_api_key)])

Each module's docstring shows its part of the interface; ``auth_dependencies`` shows the app
wiring and the one auth dependency the routes use.
"""

from mobile_multimodal.security.anomaly import Anomaly, AnomalyDetector
from mobile_multimodal.security.anomaly_middleware import SecurityMiddleware
from mobile_multimodal.security.api_keys import (
    KeyNotFoundError,
    create_key,
    hash_key,
    list_keys,
    lookup_key,
    revoke_key,
)
from mobile_multimodal.security.audit import AUDIT_LOGGER, AuditLog, EventType, count_security_event
from mobile_multimodal.security.auth_dependencies import (
    checks_key_before_body,
    get_security,
    install_security,
    require_admin,
    require_api_key,
)
from mobile_multimodal.security.auth_failure_throttle import FailureAuditThrottle, SuppressedFailures
from mobile_multimodal.security.client_address import client_ip, normalize_ip
from mobile_multimodal.security.config_audit import ConfigChange, record_config_state
from mobile_multimodal.security.integrity import FileMismatch, IntegrityMonitor, IntegrityResult, ManifestFile
from mobile_multimodal.security.principal import ANONYMOUS, Principal
from mobile_multimodal.security.ratelimit import RateLimit, RateLimiter
from mobile_multimodal.security.security_context import SecurityContext, extract_key
from mobile_multimodal.security.security_errors import SECURITY_CODES, SecurityError, keys_unchecked

__all__ = [
    "ANONYMOUS",
    "AUDIT_LOGGER",
    "SECURITY_CODES",
    "Anomaly",
    "AnomalyDetector",
    "AuditLog",
    "ConfigChange",
    "EventType",
    "FailureAuditThrottle",
    "FileMismatch",
    "IntegrityMonitor",
    "IntegrityResult",
    "KeyNotFoundError",
    "ManifestFile",
    "Principal",
    "RateLimit",
    "RateLimiter",
    "SecurityContext",
    "SecurityError",
    "SecurityMiddleware",
    "SuppressedFailures",
    "checks_key_before_body",
    "client_ip",
    "count_security_event",
    "create_key",
    "extract_key",
    "get_security",
    "hash_key",
    "install_security",
    "keys_unchecked",
    "list_keys",
    "lookup_key",
    "normalize_ip",
    "record_config_state",
    "require_admin",
    "require_api_key",
    "revoke_key",
]
