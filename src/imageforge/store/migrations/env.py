"""Alembic environment: runs the project's migrations on an async SQLAlchemy engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from imageforge.store.schema import metadata

config = context.config

#: Arbitrary constant naming imageforge's migration lock among advisory locks.
_MIGRATION_LOCK_ID = 4_242_001


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Every API node and worker upgrades at start-up; on PostgreSQL the whole
            # upgrade is one transaction, so a transaction-scoped advisory lock taken
            # before Alembic reads the version table makes the others wait, then find
            # nothing to do. (SQLite is serialised by a file lock in migrate.py.)
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "the migration runner sets sqlalchemy.url"
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    raise SystemExit("imageforge migrations run online only: use `imageforge db upgrade`")
run_migrations_online()
