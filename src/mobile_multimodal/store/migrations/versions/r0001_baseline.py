"""r0001 baseline: the schema release 0.1.0 made with ``create_all`` (schema_version 1).

A database that release created already has these tables (and ``schema_version`` = 1) but no
``alembic_version``: each table is created only where it is missing, so upgrading such a
database adopts it (an older one lacking ``export_records`` gets it), and a new one is built.

Example::

    mobile-mm db upgrade                 # on an empty database: r0001, then every later revision
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision = "r0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

SCHEMA_NUMBER = 1
_TS = sa.DateTime(timezone=True)


def _tables() -> list[tuple[str, list[SchemaItem], list[tuple[str, list[str]]]]]:
    """(table, columns and constraints, indexes) as release 0.1.0's create_all wrote them."""
    return [
        (
            "schema_version",
            [
                sa.Column("version", sa.Integer, primary_key=True),
                sa.Column("applied_at", _TS, nullable=False),
            ],
            [],
        ),
        (
            "api_keys",
            [
                sa.Column("id", sa.String(32), primary_key=True),
                sa.Column("user_id", sa.String(128), nullable=False),
                sa.Column("key_type", sa.String(16), nullable=False),
                sa.Column("is_admin", sa.Boolean, nullable=False),
                sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
                sa.Column("prefix", sa.String(16), nullable=False),
                sa.Column("created_at", _TS, nullable=False),
                sa.Column("revoked_at", _TS),
                sa.Column("last_used_at", _TS),
                sa.CheckConstraint("key_type IN ('free', 'pro')", name="ck_api_keys_key_type"),
            ],
            [("ix_api_keys_user_id", ["user_id"])],
        ),
        (
            "audit_events",
            [
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("timestamp", _TS, nullable=False),
                sa.Column("user_id", sa.String(128), nullable=False),
                sa.Column("action", sa.String(64), nullable=False),
                sa.Column("resource", sa.String(512), nullable=False),
                sa.Column("result", sa.String(16), nullable=False),
                sa.Column("source_ip", sa.String(64)),
                sa.Column("details", sa.JSON, nullable=False),
                sa.CheckConstraint("result IN ('success', 'failure')", name="ck_audit_events_result"),
            ],
            [
                ("ix_audit_events_action", ["action"]),
                ("ix_audit_events_timestamp", ["timestamp"]),
                ("ix_audit_events_user_id", ["user_id"]),
            ],
        ),
        (
            "backup_runs",
            [
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("started_at", _TS, nullable=False),
                sa.Column("finished_at", _TS),
                sa.Column("ok", sa.Boolean, nullable=False),
                sa.Column("path", sa.Text),
                sa.Column("sha256", sa.String(64)),
                sa.Column("size_bytes", sa.BigInteger),
                sa.Column("error", sa.Text),
            ],
            [],
        ),
        (
            "config_state",
            [
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("recorded_at", _TS, nullable=False),
                sa.Column("settings_hash", sa.String(64), nullable=False),
                sa.Column("snapshot", sa.JSON, nullable=False),
            ],
            [],
        ),
        (
            "export_records",
            [
                sa.Column("id", sa.String(32), primary_key=True),
                sa.Column("platform", sa.String(16), nullable=False),
                sa.Column("format", sa.String(16), nullable=False),
                sa.Column("quantization", sa.String(8), nullable=False),
                sa.Column("status", sa.String(16), nullable=False),
                sa.Column("created_at", _TS, nullable=False),
                sa.Column("started_at", _TS),
                sa.Column("finished_at", _TS),
                sa.Column("duration_s", sa.Double),
                sa.Column("size_bytes", sa.BigInteger),
                sa.Column("manifest", sa.JSON),
                sa.Column("error_code", sa.String(64)),
                sa.Column("error_message", sa.Text),
                sa.Column("requested_by", sa.String(256), nullable=False),
                sa.Column("host", sa.String(255), nullable=False),
                sa.Column("model", sa.Text, nullable=False),
                sa.Column("out_dir", sa.Text, nullable=False),
                sa.CheckConstraint(
                    "status IN ('queued', 'running', 'succeeded', 'failed')", name="ck_export_records_status"
                ),
            ],
            [
                ("ix_export_records_created_at", ["created_at"]),
                ("ix_export_records_group", ["host", "platform", "format", "quantization"]),
                ("ix_export_records_status", ["status"]),
            ],
        ),
    ]


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, items, indexes in _tables():
        if name in existing:
            continue
        op.create_table(name, *items)
        for index_name, columns in indexes:
            op.create_index(index_name, name, columns)
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT COUNT(*) FROM schema_version WHERE version = 1")).scalar_one() == 0:
        bind.execute(
            sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, CURRENT_TIMESTAMP)"),
            {"v": SCHEMA_NUMBER},
        )


def downgrade() -> None:
    for name, _, _ in reversed(_tables()):
        op.drop_table(name)
