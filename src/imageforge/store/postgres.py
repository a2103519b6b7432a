"""The PostgreSQL store: distributed mode, any number of API nodes and workers.

PostgreSQL is the queue; there is no other broker. Statements go through an
asyncpg pool directly (asyncpg prepares each statement once per connection and
reuses it): measured on a 2-core machine a row read costs 110–205 µs of CPU this
way and 480–600 µs through the ORM. Every method is one round trip where it can be:
reads run without an explicit transaction, and a write that must also wake the
workers does both in one statement (`WITH … UPDATE … RETURNING` feeding
`pg_notify`), so the notification goes out exactly when the write commits.

Claim is one statement: the eligible rows are picked `FOR UPDATE SKIP LOCKED`
(concurrent claimers skip each other's rows instead of queueing on them) and
updated to processing with the attempt bumped and the lease set. The attempt is
the fencing token for every later write by that worker.

Connection-level failures (refused, dropped, timed out, server shutting down, too
many connections) become StoreUnavailable, which the API answers with 503 and the
worker with backoff; the pool reconnects on the next call by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import asyncpg
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

# One column order and one row mapper for both databases: they share the schema.
from imageforge.store.rows import (
    KEY_COLUMNS,
    LEDGER_COLUMNS,
    TASK_COLUMNS,
    key_from_row,
    ledger_entry_from_row,
    task_from_row,
    usage_rows,
)
from imageforge.store.urls import asyncpg_dsn
from imageforge.store.wakeups import CHANNEL, TaskWakeups
from imageforge.tasks import Task

_COLUMNS = tuple(name.strip() for name in TASK_COLUMNS.split(","))
_SELECT_COLUMNS = ", ".join(_COLUMNS)
# In UPDATE … FROM picked, `id` alone would be ambiguous.
_RETURNING_COLUMNS = ", ".join(f"t.{name}" for name in _COLUMNS)
# $n of each task column in the insert statements.
_P = {name: f"${n}" for n, name in enumerate(_COLUMNS, start=1)}

_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '') FROM changed"

_INSERT_TASK = (
    f"WITH changed AS (INSERT INTO tasks ({_SELECT_COLUMNS}) "
    f"VALUES ({', '.join(_P.values())}) RETURNING 1) {_NOTIFY}"
)
# A priced task: charge the key (only if its balance covers the price), book the
# charge and insert the task, in one statement. No row comes back when the balance is
# short, and then nothing was written. An unlimited key (NULL balance) is not updated
# at all: that UPDATE would lock its row and make every create of the key wait for the
# previous one's commit (measured: 2.6k inserts/s with it, 7.2k without, 40 clients).
# FOR KEY SHARE lets those creates run side by side while an operator's balance change
# (FOR UPDATE) still waits for them, so its ledger sum includes their charges.
_CHARGE_AND_INSERT_TASK = (
    "WITH charged AS ("
    f" UPDATE api_keys SET balance_micros = balance_micros - {_P['price_micros']}"
    f" WHERE id = {_P['key_id']} AND balance_micros >= {_P['price_micros']} RETURNING id), "
    "unlimited AS ("
    f" SELECT id FROM api_keys WHERE id = {_P['key_id']} AND balance_micros IS NULL"
    " FOR KEY SHARE), "
    "payer AS (SELECT id FROM charged UNION ALL SELECT id FROM unlimited), "
    "booked AS ("
    " INSERT INTO ledger (key_id, task_id, kind, amount_micros, model, created_at)"
    f" SELECT {_P['key_id']}, {_P['id']}, 'charge', 0 - {_P['price_micros']}, {_P['model']},"
    f" {_P['created_at']} FROM payer), "
    f"changed AS (INSERT INTO tasks ({_SELECT_COLUMNS})"
    f" SELECT {', '.join(_P.values())} FROM payer RETURNING 1) "
    f"{_NOTIFY}"
)
# Creates of one key that enforce its unfinished-task quota take turns, so two of them
# cannot both see room for one more. (Two-key form: its own space of advisory locks.)
_QUOTA_LOCK = "SELECT pg_advisory_xact_lock(4242002, hashtext($1))"
_COUNT_UNFINISHED = (
    "SELECT count(*) FROM tasks WHERE key_id = $1 AND status IN ('queued', 'processing')"
)
_GET_TASK = f"SELECT {_SELECT_COLUMNS} FROM tasks WHERE id = $1"
_GET_TASKS = f"SELECT {_SELECT_COLUMNS} FROM tasks WHERE id = ANY($1::text[])"
_CLAIM = (
    "WITH picked AS ("
    " SELECT id FROM tasks WHERE status = 'queued' AND run_after <= $1"
    " ORDER BY run_after, created_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "UPDATE tasks AS t SET status = 'processing', attempt = t.attempt + 1, "
    "lease_expires_at = $3, worker_id = $4, started_at = coalesce(t.started_at, $1), "
    "updated_at = $1 "
    "FROM picked WHERE t.id = picked.id AND t.status = 'queued' "
    f"RETURNING {_RETURNING_COLUMNS}"
)
_RENEW_LEASES = (
    "UPDATE tasks AS t SET lease_expires_at = $1 "
    "FROM unnest($2::text[], $3::int[]) AS l(id, attempt) "
    "WHERE t.id = l.id AND t.attempt = l.attempt AND t.status = 'processing' "
    "RETURNING t.id"
)
_COMPLETE = (
    "UPDATE tasks SET status = 'completed', image_key = $1, content_type = $2, usage = $3, "
    "upstream = coalesce($4, upstream), error = NULL, error_code = NULL, "
    "lease_expires_at = NULL, finished_at = $5, updated_at = $5 "
    "WHERE id = $6 AND attempt = $7 AND status = 'processing'"
)
_RECORD_UPSTREAM = (
    "UPDATE tasks SET upstream = $1, upstream_task_id = $2, updated_at = $3 "
    "WHERE id = $4 AND attempt = $5 AND status = 'processing'"
)
# Refund the charge of tasks in `failed` (id, key_id, price_micros, model), in the
# statement that failed them. The unique (task_id, kind) index makes a second refund
# of one task impossible; the balance moves only for refunds actually booked, summed
# per key (UPDATE … FROM applies one source row per target row).
_REFUND_FAILED = (
    "refunded AS ("
    " INSERT INTO ledger (key_id, task_id, kind, amount_micros, model, created_at)"
    " SELECT key_id, id, 'refund', price_micros, model, $1 FROM failed WHERE price_micros > 0"
    " ON CONFLICT (task_id, kind) WHERE task_id IS NOT NULL DO NOTHING"
    " RETURNING key_id, amount_micros), "
    "credited AS ("
    " UPDATE api_keys AS k SET balance_micros = k.balance_micros + r.amount"
    " FROM (SELECT key_id, sum(amount_micros)::bigint AS amount FROM refunded"
    " GROUP BY key_id) AS r"
    " WHERE k.id = r.key_id AND k.balance_micros IS NOT NULL) "
)
_FAIL = (
    "WITH failed AS ("
    " UPDATE tasks SET status = 'failed', error = $2, error_code = $3,"
    " lease_expires_at = NULL, finished_at = $1, updated_at = $1"
    " WHERE id = $4 AND attempt = $5 AND status = 'processing'"
    " RETURNING id, key_id, price_micros, model), "
    f"{_REFUND_FAILED}"
    "SELECT id FROM failed"
)
_REQUEUE = (
    "UPDATE tasks SET status = 'queued', run_after = $1, error = $2, error_code = $3, "
    "lease_expires_at = NULL, worker_id = NULL, updated_at = $4 "
    "WHERE id = $5 AND attempt = $6 AND status = 'processing'"
)
# A task claimable at once wakes the workers; one held back by a retry delay would
# only wake them to find nothing, so the poll picks it up when it is due.
_REQUEUE_AND_NOTIFY = f"WITH changed AS ({_REQUEUE} RETURNING 1) {_NOTIFY}"
# The attempt counter never goes down (it is the fencing token), so a hand-back
# raises the budget instead of refunding the attempt.
_RELEASE_AND_NOTIFY = (
    "WITH changed AS (UPDATE tasks SET status = 'queued', run_after = $1, "
    "max_attempts = max_attempts + 1, lease_expires_at = NULL, worker_id = NULL, "
    "updated_at = $1 WHERE id = $2 AND attempt = $3 AND status = 'processing' RETURNING 1) "
    f"{_NOTIFY}"
)
# Each rescue is conditional on the row still being processing, at the attempt that
# was seen expiring, with the lease still expired: a completion or heartbeat that
# raced the rescuer wins. SKIP LOCKED: a row another transaction is writing right
# now (a completion, another node's rescuer) is left for the next pass.
_RESCUE = (
    "WITH expired AS ("
    " SELECT id, attempt, attempt < max_attempts AS retry FROM tasks"
    " WHERE status = 'processing' AND lease_expires_at < $1"
    " ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED), "
    "requeued AS ("
    " UPDATE tasks AS t SET status = 'queued', run_after = $1, error = $3,"
    " error_code = 'lease_expired', lease_expires_at = NULL, worker_id = NULL, updated_at = $1"
    " FROM expired e WHERE t.id = e.id AND e.retry AND t.attempt = e.attempt"
    " AND t.status = 'processing' AND t.lease_expires_at < $1 RETURNING t.id), "
    "failed AS ("
    " UPDATE tasks AS t SET status = 'failed',"
    " error = 'generation did not finish after ' || t.attempt || ' attempts: ' || $3,"
    " error_code = 'lease_expired', lease_expires_at = NULL, finished_at = $1, updated_at = $1"
    " FROM expired e WHERE t.id = e.id AND NOT e.retry AND t.attempt = e.attempt"
    " AND t.status = 'processing' AND t.lease_expires_at < $1"
    " RETURNING t.id, t.key_id, t.price_micros, t.model), "
    f"{_REFUND_FAILED}"
    "SELECT true AS requeued, id FROM requeued UNION ALL SELECT false, id FROM failed"
)
_USAGE_COUNTS = (
    "SELECT to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, model,"
    " count(*), count(*) FILTER (WHERE status = 'completed'),"
    " count(*) FILTER (WHERE status = 'failed'),"
    " count(*) FILTER (WHERE status IN ('queued', 'processing'))"
    " FROM tasks WHERE key_id = $1 AND created_at >= $2 GROUP BY day, model"
)
_USAGE_SPEND = (
    "SELECT to_char(to_timestamp(t.created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,"
    " t.model, (-sum(l.amount_micros))::bigint"
    " FROM ledger l JOIN tasks t ON t.id = l.task_id"
    " WHERE l.key_id = $1 AND t.created_at >= $2 AND l.kind IN ('charge', 'refund')"
    " GROUP BY day, t.model"
)

# Errors that say "the database cannot be reached or cannot serve right now", as
# opposed to a bug in a statement. TimeoutError covers connect and command timeouts.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # 40: serialization failure, deadlock
)


class _TranslateUnavailable:
    """Turns connection-level failures into StoreUnavailable (a plain class: this
    wraps every call, and a generator-based context manager costs more)."""

    def __init__(self) -> None:
        self.pool: Any = None

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, asyncpg.exceptions.InternalClientError):
            # asyncpg can leave a connection whose backend was terminated mid-operation
            # in a broken protocol state (MagicStack/asyncpg#1069); the pool would hand
            # it out again. Expiring the pool's connections makes it reconnect instead.
            if self.pool is not None:
                asyncio.get_running_loop().create_task(self.pool.expire_connections())
            raise StoreUnavailable() from exc
        if (
            exc is not None
            and isinstance(exc, _UNAVAILABLE)
            and not isinstance(exc, asyncpg.exceptions.ClientConfigurationError)
        ):
            raise StoreUnavailable() from exc


def _encode_task_value(name: str, value: Any) -> Any:
    if name == "image_urls":
        return orjson.dumps(list(value)).decode()
    if name == "usage":
        return orjson.dumps(value).decode() if value is not None else None
    if name == "status":
        return value.value
    return value


def _applied(status: str) -> bool:
    """asyncpg returns the command tag of a write, e.g. 'UPDATE 1'."""
    return status.split()[-1] == "1"


async def _keep_session(connection: Any) -> None:
    """asyncpg's default pool reset runs `SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` on every release: a second round trip for each one-statement
    call. This store never leaves session state behind (no SET, LISTEN, cursors or
    session-level advisory locks; a transaction left open is still rolled back by the
    pool), so there is nothing to reset."""


async def _insert_task_row(connection: Any, task: Task, values: list[Any]) -> None:
    if task.price_micros <= 0:
        await connection.execute(_INSERT_TASK, *values)
        return
    for _ in range(3):
        if await connection.fetch(_CHARGE_AND_INSERT_TASK, *values):
            return
        row = await connection.fetchrow(
            "SELECT balance_micros FROM api_keys WHERE id = $1", task.key_id
        )
        balance = row[0] if row is not None else 0
        if balance is not None and balance < task.price_micros:
            raise InsufficientCredits(price=task.price_micros, balance=balance)
        # The balance changed between the statement's snapshot and its lock (an
        # operator made the key limited, or credited it): try again on the new state.
    raise InsufficientCredits(price=task.price_micros, balance=0)


async def _claim_idempotency_key(
    connection: Any, task: Task, claim: IdempotencyClaim
) -> Task | None:
    """Take the key for `task`, or return the task an earlier request made with it.

    The insert comes first: a concurrent request with the same key waits on the
    unique index until this transaction ends, then replays what it committed (or
    takes the key itself if this one rolled back)."""
    while True:
        taken = await connection.fetchval(
            "INSERT INTO idempotency_keys "
            "(key_id, idempotency_key, request_hash, task_id, created_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            task.key_id,
            claim.key,
            claim.request_hash,
            task.id,
            task.created_at,
        )
        if taken:
            return None
        row = await connection.fetchrow(
            "SELECT request_hash, task_id, created_at FROM idempotency_keys "
            "WHERE key_id = $1 AND idempotency_key = $2 FOR UPDATE",
            task.key_id,
            claim.key,
        )
        if row is None:
            continue  # pruned in between: take it
        request_hash, task_id, created_at = row
        if created_at < task.created_at - claim.ttl_seconds:
            await connection.execute(
                "DELETE FROM idempotency_keys WHERE key_id = $1 AND idempotency_key = $2",
                task.key_id,
                claim.key,
            )
            continue
        if request_hash != claim.request_hash:
            raise idempotency_mismatch()
        original = await connection.fetchrow(_GET_TASK, task_id)
        return task_from_row(original)


async def _book_credit(
    connection: Any, key_id: KeyId, amount: int, note: str | None, now: float
) -> None:
    await connection.execute(
        "INSERT INTO ledger (key_id, kind, amount_micros, note, created_at) "
        "VALUES ($1, 'credit', $2, $3, $4)",
        key_id,
        amount,
        note,
        now,
    )


class PostgresStore:
    def __init__(self, pool: Any, dsn: str) -> None:
        self._pool = pool
        self._unavailable = _TranslateUnavailable()
        self._unavailable.pool = pool
        self._dsn = dsn
        self._pending_reads: list[tuple[TaskId, asyncio.Future[Task | None]]] = []
        self._reads_in_flight: set[asyncio.Future[None]] = set()

    @classmethod
    async def connect(
        cls,
        database_url: str,
        *,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
    ) -> PostgresStore:
        """A pool of up to `max_size` connections, opened on demand and reopened after
        they break, so the store outlives a database restart. (No minimum: asyncpg
        would keep re-dialling a floor of connections through an outage, logging a
        traceback each time, where on-demand connections just fail with the call.)"""
        dsn = asyncpg_dsn(database_url)
        with _TranslateUnavailable():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                server_settings={"application_name": "imageforge"},
                reset=_keep_session,
            )
        store = cls(pool, dsn)
        try:
            await store.ping()  # fail at start-up, not on the first request
        except BaseException:
            await store.close()
            raise
        return store

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
        with self._unavailable:
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(
                    "INSERT INTO api_keys (id, name, key_hash, hint, created_at, balance_micros) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    key_id,
                    name,
                    key_hash,
                    hint,
                    now,
                    balance_micros,
                )
                if balance_micros is not None:
                    await _book_credit(connection, key_id, balance_micros, "initial credits", now)
        return ApiKeyRecord(
            id=key_id,
            name=name,
            hint=hint,
            created_at=now,
            revoked_at=None,
            balance_micros=balance_micros,
        )

    async def get_key(self, key_id: KeyId) -> ApiKeyRecord | None:
        with self._unavailable:
            row = await self._pool.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id
            )
        return key_from_row(row) if row is not None else None

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
        with self._unavailable:
            async with self._pool.acquire() as connection, connection.transaction():
                # The row lock makes concurrent charges wait, so the ledger sum read
                # below includes every charge that committed before this change.
                row = await connection.fetchrow(
                    "SELECT balance_micros FROM api_keys WHERE id = $1 FOR UPDATE", key_id
                )
                if row is None:
                    raise NotFound(f"no key with id {key_id}", param="key_id", code="key_not_found")
                if unlimited:
                    await connection.execute(
                        "UPDATE api_keys SET balance_micros = NULL WHERE id = $1", key_id
                    )
                else:
                    # The ledger of a limited key always sums to its balance (see sqlite.py).
                    ledger_sum = await connection.fetchval(
                        "SELECT coalesce(sum(amount_micros), 0)::bigint FROM ledger "
                        "WHERE key_id = $1",
                        key_id,
                    )
                    delta, target = plan_balance_change(row[0], ledger_sum, add_micros, set_micros)
                    await connection.execute(
                        "UPDATE api_keys SET balance_micros = $1 WHERE id = $2", target, key_id
                    )
                    if delta:
                        await _book_credit(connection, key_id, delta, note, now)
                updated = await connection.fetchrow(
                    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id
                )
        return key_from_row(updated)

    async def ledger_entries(self, key_id: KeyId) -> list[LedgerEntry]:
        with self._unavailable:
            rows = await self._pool.fetch(
                f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE key_id = $1 ORDER BY id",
                key_id,
            )
        return [ledger_entry_from_row(row) for row in rows]

    async def usage(self, key_id: KeyId, *, since: float) -> list[UsageRow]:
        with self._unavailable:
            async with self._pool.acquire() as connection:
                counts = await connection.fetch(_USAGE_COUNTS, key_id, since)
                spend = await connection.fetch(_USAGE_SPEND, key_id, since)
        return usage_rows(counts, spend)

    async def prune_idempotency_keys(self, *, older_than: float) -> int:
        with self._unavailable:
            status = await self._pool.execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1", older_than
            )
        return int(status.split()[-1])

    async def count_request(self, key_id: KeyId, *, window_start: int) -> int:
        with self._unavailable:
            hits = await self._pool.fetchval(
                "INSERT INTO rate_limit_windows (key_id, window_start, hits) VALUES ($1, $2, 1) "
                "ON CONFLICT (key_id, window_start) "
                "DO UPDATE SET hits = rate_limit_windows.hits + 1 RETURNING hits",
                key_id,
                window_start,
            )
        return int(hits)

    async def prune_request_counts(self, *, older_than: int) -> int:
        with self._unavailable:
            status = await self._pool.execute(
                "DELETE FROM rate_limit_windows WHERE window_start < $1", older_than
            )
        return int(status.split()[-1])

    async def list_keys(self) -> list[ApiKeyRecord]:
        with self._unavailable:
            rows = await self._pool.fetch(
                f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            )
        return [key_from_row(row) for row in rows]

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._unavailable:
            row = await self._pool.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash
            )
        return key_from_row(row) if row is not None else None

    async def revoke_key(self, key_id: KeyId, *, now: float) -> bool:
        with self._unavailable:
            status = await self._pool.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                now,
                key_id,
            )
        return _applied(status)

    async def keys_fingerprint(self) -> tuple[int, int]:
        with self._unavailable:
            row = await self._pool.fetchrow("SELECT count(*), count(revoked_at) FROM api_keys")
        return int(row[0]), int(row[1])

    # Tasks ------------------------------------------------------------------

    async def insert_task(
        self,
        task: Task,
        *,
        idempotency: IdempotencyClaim | None = None,
        max_unfinished: int | None = None,
    ) -> tuple[Task, bool]:
        values = [_encode_task_value(name, getattr(task, name)) for name in _COLUMNS]
        with self._unavailable:
            if idempotency is None and max_unfinished is None:
                # The hot path: one statement, one round trip.
                async with self._pool.acquire() as connection:
                    await _insert_task_row(connection, task, values)
                return task, False
            async with self._pool.acquire() as connection, connection.transaction():
                if idempotency is not None:
                    replayed = await _claim_idempotency_key(connection, task, idempotency)
                    if replayed is not None:
                        return replayed, True
                if max_unfinished is not None:
                    await connection.execute(_QUOTA_LOCK, task.key_id)
                    unfinished = await connection.fetchval(_COUNT_UNFINISHED, task.key_id)
                    if unfinished >= max_unfinished:
                        raise too_many_unfinished(max_unfinished)
                await _insert_task_row(connection, task, values)
        return task, False

    async def get_task(self, task_id: TaskId) -> Task | None:
        """One round trip, shared: reads asked for in the same event-loop turn (a burst
        of polls) go out as one `WHERE id = ANY(…)`, which costs this process and the
        server far less than one statement each."""
        future: asyncio.Future[Task | None] = asyncio.get_running_loop().create_future()
        self._pending_reads.append((task_id, future))
        if len(self._pending_reads) == 1:
            asyncio.get_running_loop().call_soon(self._send_reads)
        return await future

    def _send_reads(self) -> None:
        batch, self._pending_reads = self._pending_reads, []
        sending = asyncio.ensure_future(self._read_batch(batch))
        self._reads_in_flight.add(sending)
        sending.add_done_callback(self._reads_in_flight.discard)

    async def _read_batch(self, batch: list[tuple[TaskId, asyncio.Future[Task | None]]]) -> None:
        try:
            with self._unavailable:
                if len(batch) == 1:
                    row = await self._pool.fetchrow(_GET_TASK, batch[0][0])
                    rows = [row] if row is not None else []
                else:
                    rows = await self._pool.fetch(_GET_TASKS, list({i for i, _ in batch}))
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    # One exception object per waiter: they each add their own traceback.
                    failure = StoreUnavailable() if isinstance(exc, StoreUnavailable) else exc
                    failure.__cause__ = exc.__cause__ if failure is not exc else None
                    future.set_exception(failure)
            return
        found = {row[0]: row for row in rows}
        for task_id, future in batch:
            if not future.done():
                row = found.get(task_id)
                future.set_result(task_from_row(row) if row is not None else None)

    async def claim(
        self, *, worker_id: str, limit: int, lease_seconds: float, now: float
    ) -> list[Task]:
        with self._unavailable:
            rows = await self._pool.fetch(_CLAIM, now, limit, now + lease_seconds, worker_id)
        tasks = [task_from_row(row) for row in rows]
        # RETURNING has no order; hand tasks out oldest first like the queue does.
        tasks.sort(key=lambda task: (task.run_after, task.created_at))
        return tasks

    async def renew_leases(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_until: float
    ) -> set[TaskId]:
        if not leases:
            return set()
        ids = [task_id for task_id, _ in leases]
        attempts = [attempt for _, attempt in leases]
        with self._unavailable:
            rows = await self._pool.fetch(_RENEW_LEASES, lease_until, ids, attempts)
        return {TaskId(row[0]) for row in rows}

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
        with self._unavailable:
            status = await self._pool.execute(
                _COMPLETE,
                image_key,
                content_type,
                orjson.dumps(usage).decode() if usage is not None else None,
                upstream,
                now,
                task_id,
                attempt,
            )
        return _applied(status)

    async def record_upstream(
        self, task_id: TaskId, attempt: int, *, upstream: str, upstream_task_id: str, now: float
    ) -> bool:
        with self._unavailable:
            status = await self._pool.execute(
                _RECORD_UPSTREAM, upstream, upstream_task_id, now, task_id, attempt
            )
        return _applied(status)

    async def fail(
        self, task_id: TaskId, attempt: int, *, error: str, error_code: str, now: float
    ) -> bool:
        with self._unavailable:
            rows = await self._pool.fetch(_FAIL, now, error, error_code, task_id, attempt)
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
        args = (run_after, error, error_code, now, task_id, attempt)
        with self._unavailable:
            if run_after <= now:
                return len(await self._pool.fetch(_REQUEUE_AND_NOTIFY, *args)) == 1
            return _applied(await self._pool.execute(_REQUEUE, *args))

    async def release(self, task_id: TaskId, attempt: int, *, now: float) -> bool:
        with self._unavailable:
            rows = await self._pool.fetch(_RELEASE_AND_NOTIFY, now, task_id, attempt)
        return len(rows) == 1

    async def rescue_expired(self, *, now: float, limit: int = 500) -> RescueReport:
        with self._unavailable:
            async with self._pool.acquire() as connection, connection.transaction():
                rows = await connection.fetch(_RESCUE, now, limit, RESCUE_ERROR)
                if any(row[0] for row in rows):
                    await connection.execute(f"SELECT pg_notify('{CHANNEL}', '')")
        return RescueReport(
            requeued=tuple(TaskId(row[1]) for row in rows if row[0]),
            failed=tuple(TaskId(row[1]) for row in rows if not row[0]),
        )

    async def count_tasks_by_status(self) -> dict[str, int]:
        with self._unavailable:
            rows = await self._pool.fetch("SELECT status, count(*) FROM tasks GROUP BY status")
        return {row[0]: int(row[1]) for row in rows}

    async def ping(self) -> None:
        with self._unavailable:
            await self._pool.fetchval("SELECT 1")

    # Wake-ups ---------------------------------------------------------------

    async def listen_for_queued_tasks(self, callback: Callable[[], None]) -> None:
        """Run until cancelled: call `callback` whenever a task becomes claimable on
        any node (LISTEN/NOTIFY on a dedicated connection that reconnects)."""
        await TaskWakeups(self._dsn, callback).run()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5.0)
        except _UNAVAILABLE:
            # A connection still busy (or wedged) after the grace: close it hard.
            self._pool.terminate()
