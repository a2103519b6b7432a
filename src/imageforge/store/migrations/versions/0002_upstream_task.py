"""Upstream routing: which upstream served a task, and the task's id there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("upstream", sa.String(100), nullable=True))
        batch.add_column(sa.Column("upstream_task_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("upstream_task_id")
        batch.drop_column("upstream")
