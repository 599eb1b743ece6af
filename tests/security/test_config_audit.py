"""Configuration changes between starts: baseline, unchanged, changed (secrets never stored)."""

from __future__ import annotations

from prometheus_client import REGISTRY
from sqlalchemy import select

from mobile_multimodal.security import record_config_state
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import AuditEvent, ConfigState, Database


def value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_baseline_then_unchanged_then_changed(db: Database) -> None:
    changes = value("config_changes_total", {"source": "startup"})
    events = value("security_events_total", {"event_type": "config_change"})
    base = Settings(port=8080, metrics_token="tok-1-very-secret", data_dir="/srv/mm")

    first = record_config_state(db, base)
    assert first.first and not first.changed
    again = record_config_state(db, base.model_copy())
    assert not again.first and not again.changed
    assert value("config_changes_total", {"source": "startup"}) == changes

    changed = record_config_state(db, base.model_copy(update={"metrics_token": "tok-2", "auth": "required"}))
    assert changed.changed and changed.changed_fields == ["auth", "metrics_token"]
    assert value("config_changes_total", {"source": "startup"}) == changes + 1
    assert value("security_events_total", {"event_type": "config_change"}) == events + 1

    with db.session() as s:
        states = list(s.scalars(select(ConfigState).order_by(ConfigState.id)))
        audit = [(e.action, e.details.get("changed_fields")) for e in s.scalars(select(AuditEvent))]
    assert len(states) == 2  # the unchanged start added no row
    assert audit == [("config.baseline", None), ("config.change", ["auth", "metrics_token"])]
    stored = repr([st.snapshot for st in states])
    assert "tok-1-very-secret" not in stored and "tok-2" not in stored
    assert states[1].snapshot["metrics_token"].startswith("sha256:")
