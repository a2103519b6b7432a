"""Persistence: tables, migrations and one store implementation per database."""

from __future__ import annotations

from collections.abc import Callable

from imageforge.errors import ConfigurationError
from imageforge.store.base import (
    ApiKeyRecord,
    RescueReport,
    Store,
    StoreConflict,
    StoreUnavailable,
)
from imageforge.store.migrate import upgrade_database
from imageforge.store.urls import DEFAULT_POOL_SIZE, database_backend

__all__ = [
    "ApiKeyRecord",
    "RescueReport",
    "Store",
    "StoreConflict",
    "StoreUnavailable",
    "open_store",
    "upgrade_database",
]


async def open_store(
    database_url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    clock: Callable[[], float] | None = None,
) -> Store:
    """Connect to the database named by the URL. Migrations are applied separately.

    `pool_size`: PostgreSQL connections at most. `clock`: the time of leases, schedules
    and transitions; None for the database's own (PostgreSQL's server clock, SQLite's
    machine clock). Only tests that move time pass one."""
    if database_backend(database_url) == "postgresql":
        try:
            from imageforge.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                "PostgreSQL needs the asyncpg driver: pip install 'imageforge[postgres]'"
            ) from exc
        return await PostgresStore.connect(database_url, pool_size=pool_size, clock=clock)
    from imageforge.store.sqlite import SqliteStore, sqlite_path

    if clock is None:
        return SqliteStore(sqlite_path(database_url))
    return SqliteStore(sqlite_path(database_url), clock=clock)
