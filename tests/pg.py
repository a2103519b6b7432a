"""PostgreSQL for tests: throw-away databases on a real server, dropped at the end.

`tests/conftest.py` loads this as a plugin, so every test module can ask for its fixtures.
The server is `IMAGEFORGE_TEST_DATABASE_URL` (any database on it; default
postgresql://postgres@127.0.0.1:5432/postgres). Each test session creates its
databases under a unique name and drops them when it ends. Without a reachable server
the tests are skipped with a message saying how to enable them, except where they must
run: with `CI` set or `IMAGEFORGE_REQUIRE_POSTGRES=1` they fail instead.

Test modules also import its helpers, so it opts out of assertion rewriting (which a
plugin imported before pytest registers it cannot get): PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from imageforge.store.schema import metadata
from imageforge.store.urls import asyncpg_dsn
from imageforge.testing.postgres import PostgresServer, run_sync

# Re-exported: the PostgreSQL tests import these from here, beside the fixtures.
__all__ = ["PostgresServer", "pg_connect", "run_sync", "truncate_all"]

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_URL_ENV = "IMAGEFORGE_TEST_DATABASE_URL"


def postgres_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("IMAGEFORGE_REQUIRE_POSTGRES") == "1"


def _unreachable(reason: str) -> None:
    message = (
        f"PostgreSQL not reachable ({reason}); start it (e.g. `pg_ctlcluster "
        "--skip-systemctl-redirect $(ls /etc/postgresql) main start`) or set "
        f"{SERVER_URL_ENV}="
        "postgresql://USER@HOST:PORT/postgres to run the PostgreSQL tests"
    )
    if postgres_required():
        pytest.fail(
            f"{message} (required here: CI or IMAGEFORGE_REQUIRE_POSTGRES=1)", pytrace=False
        )
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(os.environ.get(SERVER_URL_ENV, DEFAULT_SERVER_URL))
    try:

        async def probe() -> None:
            connection = await server.admin_connection()
            await connection.close()

        run_sync(probe)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        shown = make_url(server.server_url).render_as_string(hide_password=True)
        _unreachable(f"{shown}: {exc}")
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture(scope="session")
def pg_session_url(postgres_server: PostgresServer) -> str:
    """The session's migrated database; tests that share it empty it first."""
    return postgres_server.create_database()


@pytest.fixture
def pg_url(pg_session_url: str) -> str:
    """The session database, emptied for this test."""
    run_sync(lambda: truncate_all(pg_session_url))
    return pg_session_url


@pytest.fixture
def fresh_pg_url(postgres_server: PostgresServer) -> str:
    """A database of this test's own (for tests that run server processes on it)."""
    return postgres_server.create_database()


async def truncate_all(url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=3)
    try:
        await connection.execute(f"TRUNCATE {', '.join(metadata.tables)}")
    finally:
        await connection.close()


async def pg_connect(url: str) -> Any:
    """A plain asyncpg connection to a test database (for inspection and sabotage)."""
    return await asyncpg.connect(asyncpg_dsn(url), timeout=3)
