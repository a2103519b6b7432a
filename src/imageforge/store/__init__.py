"""Persistence: tables, migrations and one store implementation per database."""

from __future__ import annotations

from imageforge.errors import ConfigurationError
from imageforge.store.base import ApiKeyRecord, RescueReport, Store, StoreUnavailable
from imageforge.store.migrate import upgrade_database
from imageforge.store.urls import database_backend

__all__ = [
    "ApiKeyRecord",
    "RescueReport",
    "Store",
    "StoreUnavailable",
    "open_store",
    "upgrade_database",
]


async def open_store(database_url: str) -> Store:
    """Connect to the database named by the URL. Migrations are applied separately."""
    if database_backend(database_url) == "postgresql":
        try:
            from imageforge.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                "PostgreSQL needs the asyncpg driver: pip install 'imageforge[postgres]'"
            ) from exc
        return await PostgresStore.connect(database_url)
    from imageforge.store.sqlite import SqliteStore, sqlite_path

    return SqliteStore(sqlite_path(database_url))
