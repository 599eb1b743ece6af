"""Database metrics from SQLAlchemy's engine and pool events (the Infrastructure dashboard's panel).

* ``db_query_duration_seconds{operation}``: every statement's time on the driver, by its first
  keyword bounded to select / insert / update / delete / other (DDL, PRAGMA, BEGIN...).
* ``db_pool_connections{state}``: connections this process holds open, ``in_use`` (checked out
  of a pool) and ``idle`` (open, waiting in a pool), summed over every engine of the process.

Counted from the pools' own events (connect/close, checkout/checkin), so the gauge moves when a
connection does, also under ``--workers N`` (each worker's gauge, summed by ``livesum``).

Example::

    engine = create_engine("sqlite:///var/mm.db")
    instrument_engine_metrics(engine)
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext

from mobile_multimodal.observability import metrics

OPERATIONS = ("select", "insert", "update", "delete")
_START_KEY = "_mm_query_started"
_lock = threading.Lock()
_open = 0  # connections open in this process, over all engines
_in_use = 0


def operation_label(statement: str) -> str:
    words = statement.lstrip().split(None, 1)
    op = words[0].lower() if words else ""
    return op if op in OPERATIONS else "other"


def _move(open_delta: int = 0, in_use_delta: int = 0) -> None:
    global _open, _in_use
    with _lock:
        _open = max(0, _open + open_delta)
        _in_use = min(_open, max(0, _in_use + in_use_delta))
        metrics.DB_POOL_CONNECTIONS.labels("in_use").set(_in_use)
        metrics.DB_POOL_CONNECTIONS.labels("idle").set(_open - _in_use)


def instrument_engine_metrics(engine: Engine) -> None:
    """Time every statement on ``engine`` and follow its pool's connections."""

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        conn.info.setdefault(_START_KEY, []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _end(conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        stack = conn.info.get(_START_KEY)
        if stack:
            elapsed = time.perf_counter() - stack.pop()
            metrics.DB_QUERY_DURATION.labels(operation_label(statement)).observe(elapsed)

    @event.listens_for(engine, "handle_error")
    def _error(ctx: ExceptionContext) -> None:
        stack = ctx.connection.info.get(_START_KEY) if ctx.connection is not None else None
        if stack and ctx.statement is not None:  # a failed statement took its time too
            elapsed = time.perf_counter() - stack.pop()
            metrics.DB_QUERY_DURATION.labels(operation_label(ctx.statement)).observe(elapsed)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        _move(open_delta=1)

    @event.listens_for(engine, "close")
    def _close(dbapi_conn: Any, record: Any) -> None:
        _move(open_delta=-1)

    @event.listens_for(engine, "close_detached")
    def _close_detached(dbapi_conn: Any) -> None:
        _move(open_delta=-1)

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        _move(in_use_delta=1)

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn: Any, record: Any) -> None:
        _move(in_use_delta=-1)
