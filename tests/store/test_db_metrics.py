"""Database metrics: statement durations by operation and the pool's connections, both backends."""

from __future__ import annotations

from prometheus_client import REGISTRY
from sqlalchemy import select, text

from mobile_multimodal.store import AuditEvent, Database
from mobile_multimodal.store.db_metrics import operation_label


def _count(operation: str) -> float:
    return REGISTRY.get_sample_value("db_query_duration_seconds_count", {"operation": operation}) or 0.0


def _pool(state: str) -> float:
    return REGISTRY.get_sample_value("db_pool_connections", {"state": state}) or 0.0


def test_operation_labels_are_bounded() -> None:
    assert [operation_label(s) for s in ("SELECT 1", "  insert into t", "UPDATE t", "delete from t")] == [
        "select",
        "insert",
        "update",
        "delete",
    ]
    assert {operation_label(s) for s in ("PRAGMA x", "CREATE TABLE t (a int)", "", "WITH x AS (..)")} == {
        "other"
    }


def test_each_statement_is_timed_under_its_operation(db: Database) -> None:
    before = {op: _count(op) for op in ("select", "insert", "delete")}
    with db.session() as s:
        s.add(AuditEvent(user_id="u", action="a", resource="r", result="success"))
    with db.session() as s:
        assert len(list(s.scalars(select(AuditEvent)))) == 1
        s.execute(text("DELETE FROM audit_events"))
    assert _count("insert") == before["insert"] + 1
    assert _count("select") == before["select"] + 1
    assert _count("delete") == before["delete"] + 1
    buckets = REGISTRY.get_sample_value(
        "db_query_duration_seconds_bucket", {"operation": "insert", "le": "+Inf"}
    )
    assert buckets == _count("insert")


def test_pool_gauge_follows_checkouts(db: Database) -> None:
    db.ping()  # at least one connection open and back in the pool
    in_use, idle = _pool("in_use"), _pool("idle")
    assert idle >= 1
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert _pool("in_use") == in_use + 1
        assert _pool("idle") == idle - 1  # the pooled connection was reused, not a new one opened
    assert (_pool("in_use"), _pool("idle")) == (in_use, idle)
    db.dispose()  # closes the pooled connections
    assert _pool("idle") < idle
