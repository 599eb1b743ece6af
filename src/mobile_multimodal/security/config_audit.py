"""Configuration changes: compare the settings at start with the last ones the database saw.

At each start, and at each reload (SIGHUP, serving/reload.py), the service hashes its settings
together with the effective observability configuration (``monitoring/observability.yml`` and
its environment overrides) and compares the hash with the newest ``config_state`` row. A
different hash is a configuration change: ``config_changes_total{source}`` +1,
``security_events_total{event_type="config_change"}`` +1, and an audit event listing which
settings changed. Secrets (the metrics token, the database URL with its password, the manifest
signing key) are never stored: the snapshot keeps a short sha256 fingerprint of them, enough
to tell that they changed.
The very first start records a baseline (audited, not counted as a change).

Example::

    change = record_config_state(db, get_settings(), audit=security.audit)
    if change.changed:
        print("settings changed:", change.changed_fields)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.config import ObservabilityConfig, ObservabilityConfigError, load_config
from mobile_multimodal.security.audit import AuditLog, EventType, count_security_event
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import ConfigState, Database

SECRET_FIELDS = frozenset({"metrics_token", "database_url", "manifest_signing_key"})


@dataclass(frozen=True)
class ConfigChange:
    settings_hash: str
    first: bool  # no earlier state: this start recorded the baseline
    changed: bool
    changed_fields: list[str] = field(default_factory=list)


def _fingerprint(value: Any) -> str | None:
    if value is None:
        return None
    return "sha256:" + hashlib.sha256(str(value).encode("utf-8")).hexdigest()[:16]


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _flatten(f"{prefix}.{key}", child, out)
    else:
        out[prefix] = value


def observability_snapshot(settings: Settings, config: ObservabilityConfig | None = None) -> dict[str, Any]:
    """The effective observability configuration (``observability.yml`` + its environment
    overrides) as dotted keys: ``{"observability.logging.level": "INFO", ...}``. A change to the
    file's values is a configuration change; a change to its comments is not. ``config``: the
    configuration a running service holds, instead of the file as it reads now (which may have
    been edited since that service read it)."""
    try:
        effective = config if config is not None else load_config(settings)
    except ObservabilityConfigError as exc:  # recorded as such: the reload refuses it
        return {"observability": f"invalid: {exc}"}
    out: dict[str, Any] = {}
    _flatten("observability", effective.model_dump(mode="json"), out)
    return out


def settings_snapshot(settings: Settings, observability: ObservabilityConfig | None = None) -> dict[str, Any]:
    """JSON-safe settings, secrets replaced by fingerprints, and the observability configuration
    (``observability``, else ``observability.yml`` read now)."""
    data = settings.model_dump(mode="json")
    for name in SECRET_FIELDS & data.keys():
        data[name] = _fingerprint(data[name])
    data.update(observability_snapshot(settings, observability))
    return data


def snapshot_hash(snapshot: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record_config_state(
    db: Database, settings: Settings, *, audit: AuditLog | None = None, source: str = "startup"
) -> ConfigChange:
    """Record the current settings; count and audit them as a change if they differ from the last."""
    audit = audit or AuditLog(db)
    snapshot = settings_snapshot(settings)
    digest = snapshot_hash(snapshot)
    with db.session() as s:
        last = s.scalars(select(ConfigState).order_by(ConfigState.id.desc()).limit(1)).one_or_none()
        if last is not None and last.settings_hash == digest:
            return ConfigChange(digest, first=False, changed=False)
        changed = sorted(
            k
            for k in snapshot.keys() | (last.snapshot.keys() if last else set())
            if last is None or snapshot.get(k) != last.snapshot.get(k)
        )
        s.add(ConfigState(recorded_at=datetime.now(UTC), settings_hash=digest, snapshot=snapshot))
        action = "config.baseline" if last is None else "config.change"
        details: dict[str, Any] = {"source": source, "settings_hash": digest}
        if last is not None:
            details["changed_fields"] = changed
            details["previous_hash"] = last.settings_hash
        audit.add(s, audit.make_event("system", action, "settings", "success", None, details))
    if last is None:
        return ConfigChange(digest, first=True, changed=False)
    metrics.CONFIG_RELOADS.labels(source).inc()
    count_security_event(EventType.CONFIG_CHANGE)
    return ConfigChange(digest, first=False, changed=True, changed_fields=changed)
