"""Alembic's entry point: run the revisions on the connection the caller already opened.

:func:`mobile_multimodal.store.migrate.run` puts an open connection (inside its transaction and
schema lock) into ``config.attributes["connection"]``; there is no offline (SQL script) mode.

Example::

    cfg.attributes["connection"] = conn
    alembic.command.upgrade(cfg, "head")     # imports this module
"""

from __future__ import annotations

from alembic import context

from mobile_multimodal.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through Database.upgrade() (mobile-mm db upgrade), not the alembic CLI"
    )
# render_as_batch: SQLite cannot ALTER a constraint in place; batch mode rebuilds the table.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
