"""Retention: indexes to find finished tasks and their images by age, and the leased row
that lets one node do each janitor sweep.

Revision ID: 0005_retention
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_retention"
down_revision = "0004"
branch_labels = None
depends_on = None

_FINISHED = "status IN ('completed', 'failed')"
_WITH_IMAGE = "image_key IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_tasks_finished",
        "tasks",
        ["finished_at"],
        sqlite_where=sa.text(_FINISHED),
        postgresql_where=sa.text(_FINISHED),
    )
    op.create_index(
        "ix_tasks_images_by_finish",
        "tasks",
        ["finished_at"],
        sqlite_where=sa.text(_WITH_IMAGE),
        postgresql_where=sa.text(_WITH_IMAGE),
    )
    op.create_table(
        "sweep_leases",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sweep_leases")
    op.drop_index("ix_tasks_images_by_finish", table_name="tasks")
    op.drop_index("ix_tasks_finished", table_name="tasks")
