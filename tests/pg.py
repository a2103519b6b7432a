"""PostgreSQL for tests: throw-away databases on a real server, dropped at the end.

Modules that need PostgreSQL load this as a plugin (`pytest_plugins = ["tests.pg"]`).
The server is `IMAGEFORGE_TEST_DATABASE_URL` (any database on it; default
postgresql://postgres@127.0.0.1:5432/postgres). Each test session creates its
databases under a unique name and drops them when it ends. Without a reachable server
the tests are skipped with a message saying how to enable them, except where they must
run: with `CI` set or `IMAGEFORGE_REQUIRE_POSTGRES=1` they fail instead.

Test modules also import its helpers, so it opts out of assertion rewriting (which a
plugin imported before pytest registers it cannot get): PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from imageforge.store import upgrade_database
from imageforge.store.schema import metadata
from imageforge.store.urls import asyncpg_dsn

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_URL_ENV = "IMAGEFORGE_TEST_DATABASE_URL"
_NAME_PREFIX = "imageforge_test_"
T = TypeVar("T")


def postgres_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("IMAGEFORGE_REQUIRE_POSTGRES") == "1"


def in_thread(function: Callable[[], T]) -> T:
    """Run blocking code that may start its own event loop (asyncio.run, Alembic) from
    anywhere, including a fixture called while the test's loop is running."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result()


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in another thread."""

    async def main() -> T:
        return await make()

    return in_thread(lambda: asyncio.run(main()))


class PostgresServer:
    """The server under test and the databases this session made on it."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.session_name = f"{_NAME_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        self.databases: list[str] = []

    def url_for(self, database: str) -> str:
        """The `postgresql+asyncpg://` URL imageforge is configured with."""
        url = make_url(self.server_url).set(drivername="postgresql+asyncpg", database=database)
        return url.render_as_string(hide_password=False)

    async def _admin(self) -> Any:
        return await asyncpg.connect(asyncpg_dsn(self.server_url), timeout=3)

    def create_database(self, *, migrate: bool = True) -> str:
        name = f"{self.session_name}_{len(self.databases)}"

        async def create() -> None:
            connection = await self._admin()
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        run_sync(create)
        self.databases.append(name)
        url = self.url_for(name)
        if migrate:
            in_thread(lambda: upgrade_database(url))
        return url

    def drop_all(self) -> None:
        async def drop() -> None:
            connection = await self._admin()
            try:
                for name in self.databases:
                    # FORCE: a subprocess a failed test left behind must not keep it alive.
                    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()

        run_sync(drop)
        self.databases.clear()


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
            connection = await server._admin()
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
