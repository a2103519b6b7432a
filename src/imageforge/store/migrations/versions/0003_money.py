"""Money: key balances, task prices, the ledger, idempotency keys.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("balance_micros", sa.BigInteger, nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("price_micros", sa.BigInteger, nullable=False, server_default="0")
        )
    op.create_index(
        "ix_tasks_unfinished_by_key",
        "tasks",
        ["key_id"],
        sqlite_where=sa.text("status IN ('queued', 'processing')"),
        postgresql_where=sa.text("status IN ('queued', 'processing')"),
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("task_id", sa.String(48), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index(
        "ux_ledger_task_kind",
        "ledger",
        ["task_id", "kind"],
        unique=True,
        sqlite_where=sa.text("task_id IS NOT NULL"),
        postgresql_where=sa.text("task_id IS NOT NULL"),
    )
    op.create_index("ix_ledger_key_created", "ledger", ["key_id", "created_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(48), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_idempotency_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_created", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_ledger_key_created", table_name="ledger")
    op.drop_index("ux_ledger_task_kind", table_name="ledger")
    op.drop_table("ledger")
    op.drop_index("ix_tasks_unfinished_by_key", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("price_micros")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("balance_micros")
