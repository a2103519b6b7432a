"""Persistence: tables, migrations and one store implementation per database."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from imageforge.errors import ConfigurationError
from imageforge.store.base import ApiKeyRecord, RescueReport, Store, StoreUnavailable
from imageforge.store.migrate import upgrade_database

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
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        from imageforge.store.sqlite import SqliteStore, sqlite_path

        return SqliteStore(sqlite_path(database_url))
    raise ConfigurationError(
        f"unsupported database {backend!r}: imageforge supports SQLite "
        "(sqlite+aiosqlite:///path) in this version"
    )
