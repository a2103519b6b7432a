"""The SQLite store's group commit: COMMIT off the loop, batches, isolation, failures."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imageforge.store import StoreUnavailable, upgrade_database
from imageforge.store.sqlite import SqliteStore
from tests.test_store_contract import make_task


class GatedCommits(ThreadPoolExecutor):
    """The commit thread, held at a gate the test opens; counts COMMITs; can fail them."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.gate = threading.Event()
        self.commits = 0
        self.fail_next = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def held() -> Any:
            self.gate.wait(10)
            self.commits += 1
            if self.fail_next:
                self.fail_next = False
                raise sqlite3.OperationalError("disk I/O error")
            return fn(*args, **kwargs)

        return super().submit(held)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, GatedCommits]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"
    await asyncio.to_thread(upgrade_database, url)
    store = SqliteStore(tmp_path / "g.db")
    gated = GatedCommits()
    store._writes._committer.shutdown()
    store._writes._committer = gated
    try:
        yield store, gated
    finally:
        gated.gate.set()
        await store.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_writes_in_one_loop_turn_share_one_commit(
    store: tuple[SqliteStore, GatedCommits],
) -> None:
    sqlite_store, commits = store
    tasks = [make_task() for _ in range(20)]
    commits.gate.set()
    await asyncio.gather(*(sqlite_store.insert_task(task) for task in tasks))
    assert commits.commits == 1
    for task in tasks:
        assert await sqlite_store.get_task(task.id) is not None


async def test_a_write_is_invisible_until_its_commit_is_durable(
    store: tuple[SqliteStore, GatedCommits],
) -> None:
    sqlite_store, commits = store
    task = make_task()
    write = asyncio.create_task(sqlite_store.insert_task(task))
    await settle()
    assert not write.done()  # answered only after the COMMIT
    assert await sqlite_store.get_task(task.id) is None  # reads see committed data only
    commits.gate.set()
    await write
    assert await sqlite_store.get_task(task.id) is not None


async def test_writes_during_a_commit_form_the_next_batch(
    store: tuple[SqliteStore, GatedCommits],
) -> None:
    sqlite_store, commits = store
    first = asyncio.create_task(sqlite_store.insert_task(make_task()))
    await settle()  # its COMMIT is now running (held at the gate)
    later = [make_task() for _ in range(5)]
    waiting = [asyncio.create_task(sqlite_store.insert_task(task)) for task in later]
    await settle()
    assert not any(write.done() for write in waiting)
    commits.gate.set()
    await asyncio.gather(first, *waiting)
    assert commits.commits == 2
    for task in later:
        assert await sqlite_store.get_task(task.id) is not None


async def test_a_failed_commit_fails_its_whole_batch_and_the_next_one_works(
    store: tuple[SqliteStore, GatedCommits],
) -> None:
    sqlite_store, commits = store
    commits.fail_next = True
    lost = [make_task() for _ in range(3)]
    writes = [asyncio.create_task(sqlite_store.insert_task(task)) for task in lost]
    await settle()
    commits.gate.set()
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(result, StoreUnavailable) for result in results)
    for task in lost:
        assert await sqlite_store.get_task(task.id) is None
    kept = make_task()
    await sqlite_store.insert_task(kept)
    assert await sqlite_store.get_task(kept.id) is not None


async def test_a_locked_database_is_unavailable_but_a_broken_statement_is_a_defect(
    tmp_path: Path,
) -> None:
    """Driver errors are read deliberately: "try again shortly" (503) only where the
    database cannot serve right now, not for every OperationalError."""
    path = tmp_path / "m.db"
    await asyncio.to_thread(upgrade_database, f"sqlite+aiosqlite:///{path}")
    store = SqliteStore(path, busy_timeout_ms=50)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            await store.insert_task(make_task())
        other.execute("ROLLBACK")
        other.execute("DROP TABLE rate_limit_windows")  # a schema the code cannot run on
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await store.prune_request_counts(older_than=0)
        await store.insert_task(make_task())  # only that write failed
    finally:
        other.close()
        await store.close()
