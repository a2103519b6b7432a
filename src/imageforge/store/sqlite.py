"""The SQLite store: the embedded default.

Statements run on the event loop thread: measured on a 2-core machine, a read
through the driver costs 10–17 µs where an ORM session costs ~1 ms, and one shared
writer connection kept write p99 ≈ 55 ms where several writer connections gave
340–920 ms tails. Statements here are short and never await inside a transaction.

Only the COMMIT leaves the loop: with `synchronous=FULL` it is an fsync (~0.3 ms
here), and on the loop it stalled every other request and upstream call for that
long, once per write when writes trickled in one at a time (half of a worker's
time per task at 500 upstream calls in flight). It runs on a commit thread (the
driver releases the GIL while SQLite works); writes that arrive meanwhile wait and
then share the next transaction. Reads use their own connection, so they never
wait for a commit and never see a write before it is durable.

Writers use BEGIN IMMEDIATE: a deferred read-then-write transaction fails with
"database is locked" at once, ignoring busy_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson

from imageforge.billing import InsufficientCredits
from imageforge.errors import NotFound
from imageforge.ids import KeyId, TaskId
from imageforge.store.base import (
    RESCUE_ERROR,
    ApiKeyRecord,
    IdempotencyClaim,
    LedgerEntry,
    RescueReport,
    StoreUnavailable,
    UsageRow,
    idempotency_mismatch,
    plan_balance_change,
    too_many_unfinished,
)
from imageforge.store.rows import (
    KEY_COLUMNS,
    LEDGER_COLUMNS,
    TASK_COLUMNS,
    key_from_row,
    ledger_entry_from_row,
    task_from_row,
    usage_rows,
)
from imageforge.tasks import Task

log = logging.getLogger(__name__)


def sqlite_path(database_url: str) -> Path:
    """The file behind a `sqlite[+driver]:///path` URL."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if not url.database or url.database == ":memory:":
        raise ValueError("imageforge needs a SQLite file, not an in-memory database")
    return Path(url.database)


class SqliteStore:
    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: the driver must not open transactions behind our back;
        # we issue BEGIN IMMEDIATE ourselves for every write.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # FULL: an accepted task survives power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._reader.execute("PRAGMA query_only = ON")
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-commit")
        self._batch_open = False
        self._batch_waiters: list[asyncio.Future[None]] = []
        # Set while a COMMIT runs on the commit thread: the writer connection is busy.
        self._committing: asyncio.Future[None] | None = None

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable() from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[sqlite3.Connection]:
        """One write, inside the current group-commit transaction.

        Writers that run while no COMMIT is in flight share one BEGIN IMMEDIATE …
        COMMIT, so a burst of writes pays for one fsync instead of one each. Each
        write runs under its own SAVEPOINT, so one that fails rolls back alone, and
        it returns only after the shared COMMIT: nothing is reported done before it
        is durable. The body must not await, so savepoints never interleave.
        """
        while self._committing is not None:
            # Shielded: the future is shared by every waiting writer.
            await asyncio.shield(self._committing)
        with self._guard():
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

    # Keys -------------------------------------------------------------------

    async def create_key(
        self,
        *,
        key_id: KeyId,
        name: str,
        key_hash: str,
        hint: str,
        now: float,
        balance_micros: int | None = None,
    ) -> ApiKeyRecord:
        async with self._write() as db:
            db.execute(
                "INSERT INTO api_keys (id, name, key_hash, hint, created_at, balance_micros) "
                "VALUES (?,?,?,?,?,?)",
                (key_id, name, key_hash, hint, now, balance_micros),
            )
            if balance_micros is not None:
                self._credit_entry(db, key_id, balance_micros, "initial credits", now)
        return ApiKeyRecord(
            id=key_id,
            name=name,
            hint=hint,
            created_at=now,
            revoked_at=None,
            balance_micros=balance_micros,
        )

    def _credit_entry(
        self, db: sqlite3.Connection, key_id: KeyId, amount: int, note: str | None, now: float
    ) -> None:
        db.execute(
            "INSERT INTO ledger (key_id, kind, amount_micros, note, created_at) "
            "VALUES (?, 'credit', ?, ?, ?)",
            (key_id, amount, note, now),
        )

    async def get_key(self, key_id: KeyId) -> ApiKeyRecord | None:
        with self._guard():
            row = self._reader.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        return key_from_row(row) if row else None

    async def adjust_balance(
        self,
        key_id: KeyId,
        *,
        add_micros: int | None = None,
        set_micros: int | None = None,
        unlimited: bool = False,
        note: str | None = None,
        now: float,
    ) -> ApiKeyRecord:
        async with self._write() as db:
            row = db.execute(
                "SELECT balance_micros FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no key with id {key_id}", param="key_id", code="key_not_found")
            (balance,) = row
            if unlimited:
                db.execute("UPDATE api_keys SET balance_micros = NULL WHERE id = ?", (key_id,))
            else:
                # The ledger of a limited key always sums to its balance, so a `set` books
                # exactly the difference to the ledger's sum (which, for a key that was
                # unlimited, also absorbs its earlier unlimited spend).
                (ledger_sum,) = db.execute(
                    "SELECT coalesce(sum(amount_micros), 0) FROM ledger WHERE key_id = ?",
                    (key_id,),
                ).fetchone()
                delta, target = plan_balance_change(balance, ledger_sum, add_micros, set_micros)
                db.execute("UPDATE api_keys SET balance_micros = ? WHERE id = ?", (target, key_id))
                if delta:
                    self._credit_entry(db, key_id, delta, note, now)
            updated = db.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        return key_from_row(updated)

    async def ledger_entries(self, key_id: KeyId) -> list[LedgerEntry]:
        with self._guard():
            rows = self._reader.execute(
                f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE key_id = ? ORDER BY id",
                (key_id,),
            ).fetchall()
        return [ledger_entry_from_row(row) for row in rows]

    async def usage(self, key_id: KeyId, *, since: float) -> list[UsageRow]:
        with self._guard():
            counts = self._reader.execute(
                "SELECT date(created_at, 'unixepoch') AS day, model, count(*), "
                "sum(status = 'completed'), sum(status = 'failed'), "
                "sum(status IN ('queued', 'processing')) "
                "FROM tasks WHERE key_id = ? AND created_at >= ? GROUP BY day, model",
                (key_id, since),
            ).fetchall()
            spend = self._reader.execute(
                "SELECT date(t.created_at, 'unixepoch') AS day, t.model, "
                "-sum(l.amount_micros) FROM ledger l JOIN tasks t ON t.id = l.task_id "
                "WHERE l.key_id = ? AND t.created_at >= ? AND l.kind IN ('charge', 'refund') "
                "GROUP BY day, t.model",
                (key_id, since),
            ).fetchall()
        return usage_rows(counts, spend)

    async def prune_idempotency_keys(self, *, older_than: float) -> int:
        async with self._write() as db:
            cursor = db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (older_than,))
        return cursor.rowcount

    async def count_request(self, key_id: KeyId, *, window_start: int) -> int:
        async with self._write() as db:
            (hits,) = db.execute(
                "INSERT INTO rate_limit_windows (key_id, window_start, hits) VALUES (?, ?, 1) "
                "ON CONFLICT (key_id, window_start) DO UPDATE SET hits = hits + 1 "
                "RETURNING hits",
                (key_id, window_start),
            ).fetchone()
        return int(hits)

    async def prune_request_counts(self, *, older_than: int) -> int:
        async with self._write() as db:
            cursor = db.execute(
                "DELETE FROM rate_limit_windows WHERE window_start < ?", (older_than,)
            )
        return cursor.rowcount

    async def list_keys(self) -> list[ApiKeyRecord]:
        with self._guard():
            rows = self._reader.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ).fetchall()
        return [key_from_row(row) for row in rows]

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._guard():
            row = self._reader.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone()
        return key_from_row(row) if row else None

    async def revoke_key(self, key_id: KeyId, *, now: float) -> bool:
        async with self._write() as db:
            cursor = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, key_id),
            )
        return cursor.rowcount == 1

    async def keys_fingerprint(self) -> tuple[int, int]:
        with self._guard():
            row = self._reader.execute(
                "SELECT count(*), count(revoked_at) FROM api_keys"
            ).fetchone()
        return int(row[0]), int(row[1])

    # Tasks ------------------------------------------------------------------

    async def insert_task(
        self,
        task: Task,
        *,
        idempotency: IdempotencyClaim | None = None,
        max_unfinished: int | None = None,
    ) -> tuple[Task, bool]:
        async with self._write() as db:
            if idempotency is not None:
                replayed = self._replay(db, task, idempotency)
                if replayed is not None:
                    return replayed, True
            if max_unfinished is not None:
                (unfinished,) = db.execute(
                    "SELECT count(*) FROM tasks WHERE key_id = ? "
                    "AND status IN ('queued', 'processing')",
                    (task.key_id,),
                ).fetchone()
                if unfinished >= max_unfinished:
                    raise too_many_unfinished(max_unfinished)
            if task.price_micros > 0:
                self._charge(db, task)
            self._insert_task_row(db, task)
            if idempotency is not None:
                db.execute(
                    "INSERT INTO idempotency_keys "
                    "(key_id, idempotency_key, request_hash, task_id, created_at) "
                    "VALUES (?,?,?,?,?)",
                    (
                        task.key_id,
                        idempotency.key,
                        idempotency.request_hash,
                        task.id,
                        task.created_at,
                    ),
                )
        return task, False

    def _replay(self, db: sqlite3.Connection, task: Task, claim: IdempotencyClaim) -> Task | None:
        row = db.execute(
            "SELECT request_hash, task_id, created_at FROM idempotency_keys "
            "WHERE key_id = ? AND idempotency_key = ?",
            (task.key_id, claim.key),
        ).fetchone()
        if row is None:
            return None
        request_hash, task_id, created_at = row
        if created_at < task.created_at - claim.ttl_seconds:
            db.execute(
                "DELETE FROM idempotency_keys WHERE key_id = ? AND idempotency_key = ?",
                (task.key_id, claim.key),
            )
            return None
        if request_hash != claim.request_hash:
            raise idempotency_mismatch()
        original = db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        return task_from_row(original)

    def _charge(self, db: sqlite3.Connection, task: Task) -> None:
        # Conditional on the balance covering the price: concurrent creates can never
        # take a key below zero, whatever their interleaving.
        cursor = db.execute(
            "UPDATE api_keys SET balance_micros = balance_micros - ? "
            "WHERE id = ? AND (balance_micros IS NULL OR balance_micros >= ?)",
            (task.price_micros, task.key_id, task.price_micros),
        )
        if cursor.rowcount != 1:
            row = db.execute(
                "SELECT balance_micros FROM api_keys WHERE id = ?", (task.key_id,)
            ).fetchone()
            raise InsufficientCredits(price=task.price_micros, balance=row[0] if row else 0)
        db.execute(
            "INSERT INTO ledger (key_id, task_id, kind, amount_micros, model, created_at) "
            "VALUES (?, ?, 'charge', ?, ?, ?)",
            (task.key_id, task.id, -task.price_micros, task.model, task.created_at),
        )

    def _refund(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]], now: float) -> None:
        """Refund failed tasks given as (id, key_id, price_micros, model) rows.

        Runs in the transaction that failed them; the unique ledger index makes a
        second refund of one task impossible even if this were reached twice."""
        for task_id, key_id, price, model in rows:
            if price <= 0:
                continue
            inserted = db.execute(
                "INSERT OR IGNORE INTO ledger "
                "(key_id, task_id, kind, amount_micros, model, created_at) "
                "VALUES (?, ?, 'refund', ?, ?, ?)",
                (key_id, task_id, price, model, now),
            )
            if inserted.rowcount == 1:
                db.execute(
                    "UPDATE api_keys SET balance_micros = balance_micros + ? "
                    "WHERE id = ? AND balance_micros IS NOT NULL",
                    (price, key_id),
                )

    def _insert_task_row(self, db: sqlite3.Connection, task: Task) -> None:
        db.execute(
            f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({','.join('?' * 29)})",
            (
                task.id,
                task.key_id,
                task.model,
                task.engine,
                task.prompt,
                task.quality,
                task.width,
                task.height,
                task.ratio,
                task.resolution,
                orjson.dumps(list(task.image_urls)).decode(),
                task.status.value,
                task.attempt,
                task.max_attempts,
                task.run_after,
                task.lease_expires_at,
                task.worker_id,
                task.image_key,
                task.content_type,
                task.error,
                task.error_code,
                orjson.dumps(task.usage).decode() if task.usage is not None else None,
                task.price_micros,
                task.upstream,
                task.upstream_task_id,
                task.created_at,
                task.updated_at,
                task.started_at,
                task.finished_at,
            ),
        )

    async def get_task(self, task_id: TaskId) -> Task | None:
        with self._guard():
            row = self._reader.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
        return task_from_row(row) if row else None

    async def claim(
        self, *, worker_id: str, limit: int, lease_seconds: float, now: float
    ) -> list[Task]:
        async with self._write() as db:
            rows = db.execute(
                "UPDATE tasks SET status = 'processing', attempt = attempt + 1, "
                "lease_expires_at = ?, worker_id = ?, started_at = coalesce(started_at, ?), "
                "updated_at = ? "
                "WHERE id IN (SELECT id FROM tasks WHERE status = 'queued' AND run_after <= ? "
                "ORDER BY run_after, created_at LIMIT ?) "
                f"RETURNING {TASK_COLUMNS}",
                (now + lease_seconds, worker_id, now, now, now, limit),
            ).fetchall()
        tasks = [task_from_row(row) for row in rows]
        tasks.sort(key=lambda task: (task.run_after, task.created_at))
        return tasks

    async def renew_leases(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_until: float
    ) -> set[TaskId]:
        if not leases:
            return set()
        renewed: set[TaskId] = set()
        async with self._write() as db:
            for task_id, attempt in leases:
                cursor = db.execute(
                    "UPDATE tasks SET lease_expires_at = ? "
                    "WHERE id = ? AND attempt = ? AND status = 'processing'",
                    (lease_until, task_id, attempt),
                )
                if cursor.rowcount == 1:
                    renewed.add(task_id)
        return renewed

    async def complete(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        image_key: str,
        content_type: str,
        usage: dict[str, Any] | None,
        upstream: str | None = None,
        now: float,
    ) -> bool:
        async with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'completed', image_key = ?, content_type = ?, "
                "usage = ?, upstream = coalesce(?, upstream), error = NULL, error_code = NULL, "
                "lease_expires_at = NULL, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (
                    image_key,
                    content_type,
                    orjson.dumps(usage).decode() if usage is not None else None,
                    upstream,
                    now,
                    now,
                    task_id,
                    attempt,
                ),
            )
        return cursor.rowcount == 1

    async def record_upstream(
        self, task_id: TaskId, attempt: int, *, upstream: str, upstream_task_id: str, now: float
    ) -> bool:
        async with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET upstream = ?, upstream_task_id = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (upstream, upstream_task_id, now, task_id, attempt),
            )
        return cursor.rowcount == 1

    async def fail(
        self, task_id: TaskId, attempt: int, *, error: str, error_code: str, now: float
    ) -> bool:
        async with self._write() as db:
            rows = db.execute(
                "UPDATE tasks SET status = 'failed', error = ?, error_code = ?, "
                "lease_expires_at = NULL, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing' "
                "RETURNING id, key_id, price_micros, model",
                (error, error_code, now, now, task_id, attempt),
            ).fetchall()
            self._refund(db, rows, now)
        return len(rows) == 1

    async def requeue(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        run_after: float,
        error: str,
        error_code: str,
        now: float,
    ) -> bool:
        async with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'queued', run_after = ?, error = ?, error_code = ?, "
                "lease_expires_at = NULL, worker_id = NULL, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (run_after, error, error_code, now, task_id, attempt),
            )
        return cursor.rowcount == 1

    async def release(self, task_id: TaskId, attempt: int, *, now: float) -> bool:
        # The attempt counter never goes down (it is the fencing token), so a
        # hand-back raises the budget instead of refunding the attempt.
        async with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'queued', run_after = ?, "
                "max_attempts = max_attempts + 1, lease_expires_at = NULL, worker_id = NULL, "
                "updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (now, now, task_id, attempt),
            )
        return cursor.rowcount == 1

    async def rescue_expired(self, *, now: float, limit: int = 500) -> RescueReport:
        async with self._write() as db:
            requeued = db.execute(
                "UPDATE tasks SET status = 'queued', run_after = ?, error = ?, "
                "error_code = 'lease_expired', lease_expires_at = NULL, worker_id = NULL, "
                "updated_at = ? "
                "WHERE id IN (SELECT id FROM tasks WHERE status = 'processing' "
                "AND lease_expires_at < ? AND attempt < max_attempts LIMIT ?) "
                "AND status = 'processing' AND lease_expires_at < ? RETURNING id",
                (now, RESCUE_ERROR, now, now, limit, now),
            ).fetchall()
            failed = db.execute(
                "UPDATE tasks SET status = 'failed', "
                "error = 'generation did not finish after ' || attempt || ' attempts: ' || ?, "
                "error_code = 'lease_expired', lease_expires_at = NULL, finished_at = ?, "
                "updated_at = ? "
                "WHERE id IN (SELECT id FROM tasks WHERE status = 'processing' "
                "AND lease_expires_at < ? AND attempt >= max_attempts LIMIT ?) "
                "AND status = 'processing' AND lease_expires_at < ? "
                "RETURNING id, key_id, price_micros, model",
                (RESCUE_ERROR, now, now, now, limit, now),
            ).fetchall()
            self._refund(db, failed, now)
        return RescueReport(
            requeued=tuple(TaskId(row[0]) for row in requeued),
            failed=tuple(TaskId(row[0]) for row in failed),
        )

    async def count_tasks_by_status(self) -> dict[str, int]:
        with self._guard():
            rows = self._reader.execute(
                "SELECT status, count(*) FROM tasks GROUP BY status"
            ).fetchall()
        return {status: count for status, count in rows}

    async def ping(self) -> None:
        with self._guard():
            self._reader.execute("SELECT 1").fetchone()

    async def close(self) -> None:
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
        self._reader.close()
        self._db.close()
