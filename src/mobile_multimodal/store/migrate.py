"""Run the packaged Alembic revisions (``store/migrations``) on a connection.

:class:`~mobile_multimodal.store.Database` calls these inside its schema lock and transaction;
nothing here opens a connection of its own. A database whose revision this release does not
know (written by a newer release) is refused before anything runs.

Example::

    with engine.begin() as conn:
        upgrade(conn, "head")
        print(current(conn))             # "r0002"
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection

SCRIPT_LOCATION = "mobile_multimodal.store:migrations"
Step = Callable[[Connection, str], None]  # upgrade or downgrade


class MigrationError(RuntimeError):
    """A migration cannot run: the database is at a revision this release does not ship
    (a newer release wrote it), or the target revision does not exist."""


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this release ships."""
    rev = _script().get_current_head()
    assert rev is not None  # the package always ships r0001
    return rev


def revisions() -> list[str]:
    """Every shipped revision, oldest first."""
    return [r.revision for r in reversed(list(_script().walk_revisions()))]


def current(conn: Connection) -> str | None:
    """The database's revision, or None when Alembic never ran on it."""
    return MigrationContext.configure(conn).get_current_revision()


def _check_known(conn: Connection) -> None:
    rev = current(conn)
    if rev is not None and rev not in revisions():
        raise MigrationError(f"schema revision {rev!r}, newer than this release (whose newest is {head()!r})")


def upgrade(conn: Connection, target: str = "head") -> None:
    _check_known(conn)
    try:
        command.upgrade(_config(conn), target)
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc


def downgrade(conn: Connection, target: str) -> None:
    _check_known(conn)
    try:
        command.downgrade(_config(conn), target)
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc
