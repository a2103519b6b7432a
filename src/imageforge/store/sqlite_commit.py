"""SQLite group commit: writes share one transaction, and its COMMIT leaves the loop.

With `synchronous=FULL` the fsync of each COMMIT (~0.3 ms here) was most of a
create's cost, and on the event loop it stalled every other request and upstream
call for that long, once per write when writes trickled in one at a time (half of a
worker's time per task at 500 upstream calls in flight). So writes that run while no
COMMIT is in flight share one `BEGIN IMMEDIATE … COMMIT`: the first opens the
transaction and schedules the COMMIT with `call_soon`; each write runs under its own
SAVEPOINT (a failing write rolls back alone) and is answered only after the shared
COMMIT, so nothing is reported done before it is durable. The COMMIT runs on a
commit thread (the driver releases the GIL while SQLite syncs); writes that arrive
meanwhile wait for it and form the next batch. A failed COMMIT fails every write of
its batch with StoreUnavailable (503).

BEGIN IMMEDIATE: a deferred read-then-write transaction fails with "database is
locked" at once, ignoring busy_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager

from imageforge.store.base import StoreUnavailable

log = logging.getLogger(__name__)


class GroupCommit:
    """Every write of one process, on its one writer connection."""

    def __init__(self, db: sqlite3.Connection, errors: AbstractContextManager[None]) -> None:
        """`db` must be in autocommit mode (isolation_level=None): this class opens and
        commits the transactions. `errors` maps driver errors around each write."""
        self._db = db
        self._errors = errors
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-commit")
        self._batch_open = False
        self._batch_waiters: list[asyncio.Future[None]] = []
        # Set while a COMMIT runs on the commit thread: the writer connection is busy.
        self._committing: asyncio.Future[None] | None = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[sqlite3.Connection]:
        """One write, inside the current batch; returns once the batch is durable. The
        body must not await, so savepoints never interleave."""
        while self._committing is not None:
            # Shielded: the future is shared by every waiting writer.
            await asyncio.shield(self._committing)
        with self._errors:
            if not self._batch_open:
                self._db.execute("BEGIN IMMEDIATE")
                self._batch_open = True
                asyncio.get_running_loop().call_soon(self._start_commit)
            self._db.execute("SAVEPOINT write")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK TO write")
                self._db.execute("RELEASE write")
                raise
            self._db.execute("RELEASE write")
        committed = asyncio.get_running_loop().create_future()
        self._batch_waiters.append(committed)
        await committed

    def _start_commit(self) -> None:
        if not self._batch_open:
            return  # committed by close()
        waiters, self._batch_waiters = self._batch_waiters, []
        self._batch_open = False
        loop = asyncio.get_running_loop()
        self._committing = loop.create_future()
        commit = loop.run_in_executor(self._committer, self._db.execute, "COMMIT")
        commit.add_done_callback(lambda done: self._commit_finished(done, waiters))

    def _commit_finished(
        self, commit: asyncio.Future[sqlite3.Cursor], waiters: list[asyncio.Future[None]]
    ) -> None:
        error = commit.exception()
        if error is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            log.error("group commit failed: %s", error)
        for waiter in waiters:
            if waiter.done():
                continue
            if error is not None:
                waiter.set_exception(StoreUnavailable())
            else:
                waiter.set_result(None)
        committing, self._committing = self._committing, None
        if committing is not None and not committing.done():
            committing.set_result(None)

    async def close(self) -> None:
        """Commit what is open, then stop the commit thread (the connection stays open)."""
        while self._committing is not None:
            await asyncio.shield(self._committing)
        if self._batch_open:
            waiters, self._batch_waiters = self._batch_waiters, []
            self._batch_open = False
            done: asyncio.Future[sqlite3.Cursor] = asyncio.get_running_loop().create_future()
            try:
                done.set_result(self._db.execute("COMMIT"))
            except sqlite3.Error as exc:
                done.set_exception(exc)
            self._commit_finished(done, waiters)
        self._committer.shutdown(wait=True)
