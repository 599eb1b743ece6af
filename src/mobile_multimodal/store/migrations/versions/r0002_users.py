"""r0002 users: a ``users`` table; every API key belongs to a user (schema_version 2).

Keys used to carry their user only as a string. The upgrade creates one ``users`` row per
distinct ``api_keys.user_id`` (tier ``pro`` if any of the user's keys is pro, first seen at
their oldest key), then adds the foreign key. The downgrade drops both again; the keys keep
their user strings throughout, so nothing is lost either way.

Example::

    mobile-mm db upgrade                 # r0001 -> r0002
    mobile-mm db downgrade r0001         # back again
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002"
down_revision: str | None = "r0001"
branch_labels = None
depends_on = None

SCHEMA_NUMBER = 2
FK_NAME = "fk_api_keys_user_id_users"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("user_type", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("user_type IN ('free', 'pro')", name="ck_users_user_type"),
    )
    bind = op.get_bind()
    # 'pro' sorts after 'free': MAX gives a user with any pro key the pro tier.
    bind.execute(
        sa.text(
            "INSERT INTO users (id, user_type, created_at) "
            "SELECT user_id, MAX(key_type), MIN(created_at) FROM api_keys GROUP BY user_id"
        )
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.create_foreign_key(FK_NAME, "users", ["user_id"], ["id"])
    bind.execute(
        sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, CURRENT_TIMESTAMP)"),
        {"v": SCHEMA_NUMBER},
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(FK_NAME, type_="foreignkey")
    op.drop_table("users")
    op.get_bind().execute(sa.text("DELETE FROM schema_version WHERE version = :v"), {"v": SCHEMA_NUMBER})
