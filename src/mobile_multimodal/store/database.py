"""`Database`: one engine, sessions, schema creation and a latency probe.

SQLite is the default (a file in the data directory, WAL mode so readers never block the
writer, a busy timeout so concurrent writers wait instead of failing); PostgreSQL is used when
the URL says so (``postgresql://`` or ``postgresql+psycopg://``; install the ``postgres`` extra).
Every statement is traced (see :mod:`.query_tracing`) and timed, and the pool's connections counted
(see :mod:`.db_metrics`).

The schema is brought to this release's newest Alembic revision at start (``migrations/``,
run by :mod:`.migrate`; ``mobile-mm db upgrade`` does the same by hand), under a lock so several
workers starting at once migrate once. A database written by a newer release is refused with a
clear message instead of being misread.

Example::

    from mobile_multimodal.store import Database, ApiKey
    db = Database()                      # MOBILE_MM_DATABASE_URL, else SQLite in the data dir
    print(f"{db.ping() * 1000:.1f} ms")
    with db.session() as s:
        n = s.query(ApiKey).count()
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.trace import TracerProvider
from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from mobile_multimodal.store import migrate
from mobile_multimodal.store.db_metrics import instrument_engine_metrics
from mobile_multimodal.store.query_tracing import instrument_engine
from mobile_multimodal.store.tables import SchemaVersion

# The schema_version number the newest revision writes (r0002 -> 2); backups record it.
SCHEMA_VERSION = 2
# Arbitrary constant key for pg_advisory_xact_lock: serialises schema creation across workers.
_PG_SCHEMA_LOCK = 0x6D6D5F736368


class DatabaseError(RuntimeError):
    """The database cannot be used (unreachable, unsupported URL, newer schema, ...).

    ``code`` is the error code health checks report (``DATABASE_UNAVAILABLE``).
    """

    code = "DATABASE_UNAVAILABLE"


# Errors that mean the database cannot be reached or used right now (refused or lost connection,
# an unreadable SQLite file, a locked or full database, no pooled connection in time): the caller
# may retry, and a request that needed it is a 503, not a 500. A bug in a query
# (ProgrammingError, IntegrityError) is not one of them.
DATABASE_DOWN: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    DatabaseError,
)
# The Retry-After (seconds) of a request refused because the database is down.
DATABASE_RETRY_AFTER_S = 30


class Database:
    """A database reachable by URL; SQLite or PostgreSQL.

    ``url`` defaults to ``Settings.resolved_database_url`` (``MOBILE_MM_DATABASE_URL``, else
    ``sqlite:///<data_dir>/mobile_mm.db``). ``create_schema=False`` skips table creation, for
    opening a file that must not be written to (a backup being verified).
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        busy_timeout_ms: int = 5000,
        connect_timeout_s: float = 5.0,
        tracer_provider: TracerProvider | None = None,
        create_schema: bool = True,
    ) -> None:
        if url is None:
            from mobile_multimodal.settings import get_settings

            url = get_settings().resolved_database_url
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise DatabaseError(f"invalid database URL: {exc}") from exc
        self.url = _normalise(parsed)
        self.backend: str = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.backend == "sqlite":
            kwargs.update(self._sqlite_engine_args(busy_timeout_ms))
        else:
            kwargs["connect_args"] = {"connect_timeout": max(1, round(connect_timeout_s))}
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ImportError, SQLAlchemyError) as exc:
            hint = " (pip install 'mobile-multimodal-llm[postgres]')" if self.backend == "postgresql" else ""
            raise DatabaseError(f"cannot create an engine for {self.safe_url}: {exc}{hint}") from exc
        if self.backend == "sqlite":
            self._install_sqlite_pragmas(busy_timeout_ms)
        instrument_engine(self.engine, tracer_provider)
        instrument_engine_metrics(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if create_schema:
            self.create_schema()

    # --- identity ---------------------------------------------------------------------------
    @property
    def safe_url(self) -> str:
        """The URL with its password masked, fit for logs and error messages."""
        return self.url.render_as_string(hide_password=True)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for PostgreSQL and in-memory SQLite."""
        if self.backend != "sqlite" or _is_memory(self.url):
            return None
        return Path(str(self.url.database))

    # --- engine set-up ----------------------------------------------------------------------
    def _sqlite_engine_args(self, busy_timeout_ms: int) -> dict[str, Any]:
        # The pool hands connections across threads (FastAPI runs sync dependencies in a
        # thread pool); SQLite itself serialises writers, so this is safe.
        args: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
        }
        if _is_memory(self.url):
            args["poolclass"] = StaticPool  # one shared connection, else each has its own empty DB
        else:
            Path(str(self.url.database)).parent.mkdir(parents=True, exist_ok=True)
        return args

    def _install_sqlite_pragmas(self, busy_timeout_ms: int) -> None:
        memory = _is_memory(self.url)

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL mode
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    # --- schema -----------------------------------------------------------------------------
    def create_schema(self) -> int:
        """Bring the schema to this release's newest revision; returns its schema_version number."""
        self.upgrade("head")
        return SCHEMA_VERSION

    def upgrade(self, target: str = "head") -> str | None:
        """Apply the Alembic revisions up to ``target``; returns the revision the database is at."""
        return self._migrate(migrate.upgrade, target)

    def downgrade(self, target: str) -> str | None:
        """Revert revisions down to ``target`` (a revision id, ``-1``, or ``base`` for empty)."""
        return self._migrate(migrate.downgrade, target)

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None: never migrated)."""
        try:
            with self.engine.connect() as conn:
                return migrate.current(conn)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot read the schema revision of {self.safe_url}: {_cause(exc)}") from exc

    def _migrate(self, step: migrate.Step, target: str) -> str | None:
        try:
            with self._schema_lock(), self.engine.begin() as conn:
                if self.backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
                self._refuse_newer_legacy(conn)
                step(conn, target)
                return migrate.current(conn)
        except migrate.MigrationError as exc:
            raise DatabaseError(
                f"database {self.safe_url}: {exc}; upgrade mobile-multimodal-llm or point "
                "MOBILE_MM_DATABASE_URL elsewhere"
            ) from exc
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot prepare database {self.safe_url}: {_cause(exc)}") from exc

    def _refuse_newer_legacy(self, conn: Connection) -> None:
        if not inspect(conn).has_table("schema_version"):
            return
        number = conn.scalar(select(func.max(SchemaVersion.version)))
        if number is not None and number > SCHEMA_VERSION:
            raise migrate.MigrationError(f"schema v{number}, newer than this release (v{SCHEMA_VERSION})")

    def schema_version(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.max(SchemaVersion.version)))

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        # Two processes (``--workers 2``) creating SQLite tables at once would race: one sees
        # the table missing, the other creates it first, the first fails. A file lock orders them.
        path = self.sqlite_path
        if path is None:
            yield
            return
        with open(path.with_name(path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- use --------------------------------------------------------------------------------
    def ping(self) -> float:
        """Run ``SELECT 1`` and return its round-trip latency in seconds.

        Raises :class:`DatabaseError` naming the database (password masked) and the cause.
        """
        start = time.perf_counter()
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1")).scalar_one()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database {self.safe_url} is unavailable: {_cause(exc)}") from exc
        return time.perf_counter() - start

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        """Close every pooled connection (call at shutdown, and before replacing the file)."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"


def _normalise(url: URL) -> URL:
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")  # psycopg 3, not the legacy psycopg2
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database {url.drivername!r}: use sqlite:/// or postgresql://")
    return url


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def _cause(exc: BaseException) -> str:
    """The driver's own message (SQLAlchemy's wrapper adds the SQL and a docs link), one line."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split())
    return text or type(cause).__name__
