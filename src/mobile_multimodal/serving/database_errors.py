"""A database that stops answering while the server runs is a 503 with ``Retry-After``, not a 500.

The routes that need the database (API-key checks, admin routes, export records) raise the
driver's error when PostgreSQL is down or the SQLite file cannot be read; these are mapped to
``DATABASE_UNAVAILABLE`` in the common error body, with the status every code takes from the one
table, ``mobile_multimodal.errors.STATUS`` (503). Nothing is cached: the engine's pool
pings before it hands out a connection, so the first request after the database is back works.

Example::

    install_database_error_handler(app)          # in the app factory
    raise database_unavailable()                 # where a check must refuse by itself
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from mobile_multimodal.errors import ErrorCode, error_response
from mobile_multimodal.serving.error_handlers import ServiceError
from mobile_multimodal.store import DatabaseError

log = logging.getLogger(__name__)

# Errors that mean the database cannot be reached or used right now (refused or lost connection,
# unreadable SQLite file, locked or full database, no pooled connection in time): the client may
# retry. A bug in a query (ProgrammingError, IntegrityError) stays a 500.
DATABASE_DOWN: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    DatabaseError,
)
RETRY_AFTER_S = 30
MESSAGE = "the database is unavailable; retry later (see /health)"


def database_unavailable(message: str = MESSAGE) -> ServiceError:
    return ServiceError(ErrorCode.DATABASE_UNAVAILABLE, message, headers={"Retry-After": str(RETRY_AFTER_S)})


def install_database_error_handler(app: FastAPI) -> None:
    async def on_database_down(request: Request, exc: Exception) -> JSONResponse:
        # one line per refused request, without the driver's traceback: /health says the rest
        log.warning(
            "database unavailable on %s %s: %s", request.method, request.url.path, str(exc).splitlines()[0]
        )
        return error_response(
            ErrorCode.DATABASE_UNAVAILABLE, MESSAGE, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    for error in DATABASE_DOWN:
        app.add_exception_handler(error, on_database_down)
