"""Database URLs: which backend a URL names, and the form each consumer needs.

Operators write PostgreSQL URLs three ways (`postgresql+asyncpg://`, `postgresql://`,
`postgres://`, the last what most hosting providers hand out). Alembic runs on an
async SQLAlchemy engine and needs the `+asyncpg` driver spelled out; asyncpg itself
wants a plain libpq-style DSN. Both are derived here so the rest of the code sees one
URL.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.engine import URL, make_url

from imageforge.errors import ConfigurationError

Backend = Literal["sqlite", "postgresql"]

#: PostgreSQL connections per process unless configured (`IMAGEFORGE_POSTGRES_POOL_SIZE`).
DEFAULT_POOL_SIZE = 10

_POSTGRES_NAMES = ("postgresql", "postgres")


def _parse(database_url: str) -> URL:
    try:
        return make_url(database_url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError, ValueError, …
        raise ConfigurationError(f"invalid database URL: {exc}") from exc


def database_backend(database_url: str) -> Backend:
    url = _parse(database_url)
    # Split the scheme ourselves: SQLAlchemy's get_driver_name() loads the dialect,
    # and it has no dialect at all for the `postgres` spelling.
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite":
        return "sqlite"
    if backend in _POSTGRES_NAMES:
        if driver not in ("", "asyncpg"):
            raise ConfigurationError(
                f"unsupported PostgreSQL driver {driver!r}: use postgresql+asyncpg://"
            )
        return "postgresql"
    raise ConfigurationError(
        f"unsupported database {backend!r}: use sqlite+aiosqlite:///path/to.db or "
        "postgresql+asyncpg://user:password@host:5432/dbname"
    )


def migration_url(database_url: str) -> str:
    """The URL Alembic's async engine understands."""
    if database_backend(database_url) != "postgresql":
        return database_url
    url = _parse(database_url).set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


def asyncpg_dsn(database_url: str) -> str:
    """A `postgresql://` DSN for asyncpg (password and query parameters kept)."""
    url = _parse(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
