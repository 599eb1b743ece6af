"""Configuration changes between starts: baseline, unchanged, changed (secrets never stored), and a
change to ``observability.yml``'s values with the settings unchanged."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY
from sqlalchemy import select

from mobile_multimodal.security import record_config_state
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import AuditEvent, ConfigState, Database

REPO = Path(__file__).resolve().parents[2]


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


def test_the_hash_covers_the_contents_of_observability_yml(db: Database, tmp_path: Path) -> None:
    config = tmp_path / "observability.yml"
    original = (REPO / "monitoring" / "observability.yml").read_text()
    assert "slow_request_ms: 100 " in original
    config.write_text(original)
    settings = Settings(data_dir=tmp_path, observability_config=config)
    assert record_config_state(db, settings).first

    config.write_text("# a comment, not a setting\n" + original)
    assert not record_config_state(db, settings).changed  # the effective values are the same

    config.write_text(original.replace("slow_request_ms: 100 ", "slow_request_ms: 250 "))
    changed = record_config_state(db, settings)  # the same settings, another file
    assert changed.changed and changed.changed_fields == ["observability.logging.slow_request_ms"]
    with db.session() as s:
        (state,) = s.scalars(select(ConfigState).order_by(ConfigState.id.desc()).limit(1))
    assert state.snapshot["observability.logging.slow_request_ms"] == 250
