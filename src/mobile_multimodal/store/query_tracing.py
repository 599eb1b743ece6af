"""One OpenTelemetry span per SQL statement (the guide's "Database Queries" traces).

Hooks SQLAlchemy's cursor events, so every statement the ORM or Core sends is traced, nested
under whatever span is current (an inference request, a CLI command). The span carries
``db.system``, ``db.name``, ``db.operation`` and ``db.statement`` truncated to
:data:`MAX_STATEMENT_CHARS`. Bound parameters are never recorded: they can hold API key hashes,
user ids and audit details, and statements always use placeholders, so no value reaches a span.

Example::

    engine = create_engine("sqlite://")
    instrument_engine(engine)            # spans go to the global tracer provider
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext

MAX_STATEMENT_CHARS = 1000
_SPAN_KEY = "_mm_otel_span"


def _operation(statement: str) -> str:
    words = statement.lstrip().split(None, 1)
    return words[0].upper() if words else "SQL"


def instrument_engine(engine: Engine, tracer_provider: TracerProvider | None = None) -> None:
    """Open a client span around each statement executed on ``engine``.

    ``tracer_provider`` defaults to the global one, looked up at each statement, so a provider
    configured after the engine was built is still used.
    """
    system = engine.dialect.name  # "sqlite" or "postgresql": the OTel db.system values
    db_name = engine.url.database or ""

    def tracer() -> trace.Tracer:
        return trace.get_tracer("mobile_multimodal.store", tracer_provider=tracer_provider)

    @event.listens_for(engine, "before_cursor_execute")
    def _start(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        op = _operation(statement)
        span = tracer().start_span(
            f"{op} {system}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": system,
                "db.name": db_name,
                "db.operation": op,
                "db.statement": statement[:MAX_STATEMENT_CHARS],
            },
        )
        conn.info.setdefault(_SPAN_KEY, []).append(span)

    @event.listens_for(engine, "after_cursor_execute")
    def _end(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        stack = conn.info.get(_SPAN_KEY)
        if stack:
            span = stack.pop()
            if cursor is not None and getattr(cursor, "rowcount", -1) >= 0:
                span.set_attribute("db.rows_affected", int(cursor.rowcount))
            span.end()

    @event.listens_for(engine, "handle_error")
    def _error(ctx: ExceptionContext) -> None:
        conn = ctx.connection
        stack = conn.info.get(_SPAN_KEY) if conn is not None else None
        if stack:
            span = stack.pop()
            # Only the type: driver messages can quote values (PostgreSQL's "Key (x)=(...)").
            error_type = type(ctx.original_exception).__name__
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
            span.end()
