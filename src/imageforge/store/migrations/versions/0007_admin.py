"""Admin keys and the audit table: who did what to which key or task, and when.

Revision ID: 0007_admin
Revises: 0006_lifecycle
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_admin"
down_revision = "0006_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing keys stay what they were: task-API keys, not admin keys.
    op.add_column(
        "api_keys", sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column(
        "api_keys", sa.Column("task_api", sa.Boolean, nullable=False, server_default=sa.true())
    )
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("target", sa.String(100), nullable=True),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("admin_audit")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("task_api")
        batch.drop_column("admin")
