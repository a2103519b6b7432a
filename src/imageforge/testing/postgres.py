"""Throw-away PostgreSQL databases on a real server, for tests and benchmarks.

Needs the `postgres` extra (asyncpg). The pytest fixtures built on it live in the
test suite (tests/pg.py); this module knows nothing of pytest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from imageforge.store import upgrade_database
from imageforge.store.urls import asyncpg_dsn

_NAME_PREFIX = "imageforge_test_"
T = TypeVar("T")


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
    """A server to make databases on, and the databases this process made there."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.session_name = f"{_NAME_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        self.databases: list[str] = []

    def url_for(self, database: str) -> str:
        """The `postgresql+asyncpg://` URL imageforge is configured with."""
        url = make_url(self.server_url).set(drivername="postgresql+asyncpg", database=database)
        return url.render_as_string(hide_password=False)

    async def admin_connection(self) -> Any:
        """A connection to the server's own database (the one in `server_url`)."""
        return await asyncpg.connect(asyncpg_dsn(self.server_url), timeout=3)

    def create_database(self, *, migrate: bool = True) -> str:
        """A new empty database (migrated unless told otherwise); → its URL."""
        name = f"{self.session_name}_{len(self.databases)}"

        async def create() -> None:
            connection = await self.admin_connection()
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
            connection = await self.admin_connection()
            try:
                for name in self.databases:
                    # FORCE: a subprocess a failed test left behind must not keep it alive.
                    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()

        run_sync(drop)
        self.databases.clear()
