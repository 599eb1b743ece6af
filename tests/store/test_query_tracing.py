"""One span per SQL statement (store/query_tracing.py), through a real Database on SQLite and
PostgreSQL: the statement without its parameters, and an error status when it fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from mobile_multimodal.store import AuditEvent, Database


def test_statements_are_traced_without_parameters(db_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with Database(db_url, tracer_provider=provider) as db:
        exporter.clear()  # drop the schema-creation statements
        with db.session() as s:
            s.add(AuditEvent(user_id="secret-user-xyz", action="a", resource="r", result="success"))
        with db.session() as s:
            s.scalars(select(AuditEvent).where(AuditEvent.user_id == "secret-user-xyz")).all()
    spans = exporter.get_finished_spans()
    system = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    ops = [s.attributes["db.operation"] for s in spans if s.attributes]
    assert "INSERT" in ops and "SELECT" in ops
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["db.system"] == system
        statement = str(span.attributes["db.statement"])
        assert len(statement) <= 1000
        assert "secret-user-xyz" not in statement  # bound parameters never reach the span


def test_failed_statement_span_is_an_error(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with Database(f"sqlite:///{tmp_path / 'a.db'}", tracer_provider=provider) as db:
        exporter.clear()
        with pytest.raises(OperationalError), db.engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "OperationalError"
