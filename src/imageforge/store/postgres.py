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

Times of leases, schedules and transitions are the database server's (`now()` in
each statement, as river and procrastinate do): nodes whose clocks disagree still
agree on which leases expired and which tasks are due.

Driver errors are mapped deliberately (`postgres_errors.py`): connection-level failures
(refused, dropped, timed out, server shutting down, too many connections) become
StoreUnavailable, which the API answers with 503 and the worker with backoff (the
pool reconnects on the next call by itself); a duplicate becomes StoreConflict
(409); a transaction the server rolled back to break a deadlock or a serialization
conflict is run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from imageforge.billing import InsufficientCredits
from imageforge.ids import KeyId, TaskId
from imageforge.store import postgres_sql as pg
from imageforge.store import procedures
from imageforge.store import statements as sql
from imageforge.store.base import (
    RESCUE_ERROR,
    ApiKeyRecord,
    DueWebhook,
    IdempotencyClaim,
    LeaseReport,
    RescueReport,
    StoreUnavailable,
    UsageRow,
    too_many_unfinished,
)
from imageforge.store.lifecycle import LifecycleProcedures
from imageforge.store.postgres_errors import (
    UNAVAILABLE,
    DriverErrors,
    ignore_cancelled_handshakes,
    retried_when_rolled_back,
)
from imageforge.store.procedures import Procedure
from imageforge.store.rows import (
    RUN_AFTER,
    due_webhook_from_row,
    encode_usage,
    key_from_row,
    task_from_row,
    task_values,
    usage_rows,
)
from imageforge.store.sweeps import SweepProcedures
from imageforge.store.urls import DEFAULT_POOL_SIZE, asyncpg_dsn
from imageforge.store.wakeups import CHANGES_CHANNEL, TaskWakeups, change_payloads
from imageforge.tasks import Task

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _run(connection: Any, procedure: Procedure[T]) -> T:
    """Run a procedure's statements on one connection (inside its transaction)."""
    try:
        statement, args = next(procedure)
        while True:
            rows = await connection.fetch(statement.postgres, *args)
            statement, args = procedure.send(rows)
    except StopIteration as finished:
        result: T = finished.value
        return result


async def _keep_session(connection: Any) -> None:
    """asyncpg's default pool reset runs `SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` on every release: a second round trip for each one-statement
    call. This store never leaves session state behind (no SET, LISTEN, cursors or
    session-level advisory locks; a transaction left open is still rolled back by the
    pool), so there is nothing to reset."""


class PostgresStore(
    procedures.KeyProcedures, procedures.AuditProcedures, SweepProcedures, LifecycleProcedures
):
    def __init__(self, pool: Any, dsn: str, *, clock: Callable[[], float] | None = None) -> None:
        """`clock`: None for the database's clock (what every deployment wants); a
        function, for tests that move time, is used in its place."""
        self._pool = pool
        self._driver_errors = DriverErrors()
        self._driver_errors.pool = pool
        self._dsn = dsn
        self._clock = clock
        self._pending_reads: list[tuple[TaskId, asyncio.Future[Task | None]]] = []
        self._reads_in_flight: set[asyncio.Future[None]] = set()
        self._changed: Callable[[TaskId], None] = lambda _task_id: None
        #: The NOTIFY in flight after creates (`_wake_workers`), and whether another is due.
        self._waking: asyncio.Task[None] | None = None
        self._wake_again = False
        #: Changed task ids not yet announced to other nodes, and the NOTIFY sending them.
        self._changes_to_send: dict[TaskId, None] = {}
        self._sending_changes: asyncio.Task[None] | None = None

    def watch_changes(self, callback: Callable[[TaskId], None]) -> None:
        self._changed = callback

    def _announce(self, task_id: TaskId) -> None:
        """A transition of `task_id` committed: this process's waiters are told at once,
        other nodes' after it (`_tell_other_nodes`)."""
        self._changed(task_id)
        self._changes_to_send[task_id] = None
        if self._sending_changes is None:
            loop = asyncio.get_running_loop()
            self._sending_changes = loop.create_task(self._tell_other_nodes())

    async def _tell_other_nodes(self) -> None:
        """NOTIFY the changed task ids, after their commits and many in one notification.
        A notification inside a transition's statement would serialise every commit behind
        PostgreSQL's notification-queue lock (see `postgres_sql.INSERT_TASK`); here one is in
        flight per process, carrying every change that came meanwhile. A notification that
        fails is only a wake-up lost: a long-poll still answers when its wait ends, an event
        stream reads its task again at each keep-alive."""
        try:
            while self._changes_to_send:
                changed = list(self._changes_to_send)
                self._changes_to_send.clear()
                for payload in change_payloads(changed):
                    try:
                        await self._pool.execute(pg.ANNOUNCE_CHANGES, payload)
                    except Exception:
                        log.debug("a change notification failed", exc_info=True)
        finally:
            self._sending_changes = None

    @classmethod
    async def connect(
        cls,
        database_url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        clock: Callable[[], float] | None = None,
    ) -> PostgresStore:
        """A pool of up to `pool_size` connections, opened on demand and reopened after
        they break, so the store outlives a database restart. (No minimum: asyncpg
        would keep re-dialling a floor of connections through an outage, logging a
        traceback each time, where on-demand connections just fail with the call.)"""
        dsn = asyncpg_dsn(database_url)
        ignore_cancelled_handshakes(asyncio.get_running_loop())
        with DriverErrors():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=pool_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                server_settings={"application_name": "imageforge"},
                reset=_keep_session,
            )
        store = cls(pool, dsn, clock=clock)
        try:
            await store.ping()  # fail at start-up, not on the first request
        except BaseException:
            await store.close()
            raise
        return store

    def _now(self) -> float | None:
        """The `{now}` parameter: None lets the database's clock decide."""
        return None if self._clock is None else self._clock()

    async def _read(self, statement: sql.Statement, *args: Any) -> list[Any]:
        with self._driver_errors:
            rows: list[Any] = await self._pool.fetch(statement.postgres, *args)
        return rows

    # Keys (create_key, adjust_balance and revoke_key: procedures.KeyProcedures; the janitor's
    # methods: sweeps.SweepProcedures) -------------------------------------------

    @retried_when_rolled_back
    async def _in_transaction(self, make: Callable[[], Procedure[T]]) -> T:
        with self._driver_errors:
            async with self._pool.acquire() as connection, connection.transaction():
                return await _run(connection, make())

    async def _read_rows(self, statement: sql.Statement, *args: Any) -> list[Any]:
        return await self._read(statement, *args)

    async def get_key(self, key_id: KeyId) -> ApiKeyRecord | None:
        rows = await self._read(sql.GET_KEY, key_id)
        return key_from_row(rows[0]) if rows else None

    async def usage(self, key_id: KeyId, *, since: float) -> list[UsageRow]:
        counts = await self._read(sql.USAGE_COUNTS, key_id, since)
        spend = await self._read(sql.USAGE_SPEND, key_id, since)
        return usage_rows(counts, spend)

    @retried_when_rolled_back
    async def prune_idempotency_keys(self, *, older_than: float) -> int:
        with self._driver_errors:
            status = await self._pool.execute(sql.PRUNE_IDEMPOTENCY_KEYS.postgres, older_than)
        return int(status.split()[-1])

    @retried_when_rolled_back
    async def count_request(self, key_id: KeyId, *, window_start: int) -> int:
        with self._driver_errors:
            hits = await self._pool.fetchval(sql.COUNT_REQUEST.postgres, key_id, window_start)
        return int(hits)

    @retried_when_rolled_back
    async def prune_request_counts(self, *, older_than: int) -> int:
        with self._driver_errors:
            status = await self._pool.execute(sql.PRUNE_REQUEST_COUNTS.postgres, older_than)
        return int(status.split()[-1])

    async def list_keys(self) -> list[ApiKeyRecord]:
        return [key_from_row(row) for row in await self._read(sql.LIST_KEYS)]

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        rows = await self._read(sql.FIND_KEY, key_hash)
        return key_from_row(rows[0]) if rows else None

    async def keys_fingerprint(self) -> tuple[int, int]:
        ((keys, revoked),) = await self._read(sql.KEYS_FINGERPRINT)
        return int(keys), int(revoked)

    # Tasks ------------------------------------------------------------------

    @retried_when_rolled_back
    async def insert_task(
        self,
        task: Task,
        *,
        idempotency: IdempotencyClaim | None = None,
        max_unfinished: int | None = None,
    ) -> tuple[Task, bool]:
        values = task_values(task)
        values.append(self._now())
        with self._driver_errors:
            if idempotency is None and max_unfinished is None:
                # The hot path: one statement, one round trip.
                async with self._pool.acquire() as connection:
                    run_after = await self._charge_and_insert(connection, task, values)
            else:
                async with self._pool.acquire() as connection, connection.transaction():
                    if idempotency is not None:
                        procedure = procedures.take_idempotency_key(task, idempotency)
                        replayed = await _run(connection, procedure)
                        if replayed is not None:
                            return replayed, True
                    if max_unfinished is not None:
                        await connection.execute(pg.QUOTA_LOCK, task.key_id)
                        unfinished = await connection.fetchval(
                            sql.COUNT_UNFINISHED.postgres, task.key_id
                        )
                        if unfinished >= max_unfinished:
                            raise too_many_unfinished(max_unfinished)
                    run_after = await self._charge_and_insert(connection, task, values)
        self._wake_workers()
        if run_after != values[RUN_AFTER]:
            task = task.evolve(run_after=run_after)
        return task, False

    def _wake_workers(self) -> None:
        """Tell every node's workers that a task was queued, after its commit: one NOTIFY
        of this process in flight at a time, and one more after it for every commit that
        came meanwhile, so a burst of creates costs a few notifications, not one each
        (and no create's commit waits for another's, see `postgres_sql.INSERT_TASK`). A
        notification that fails is only a wake-up lost: workers poll anyway."""
        if self._waking is not None:
            self._wake_again = True
            return
        self._waking = asyncio.get_running_loop().create_task(self._notify_until_caught_up())

    async def _notify_until_caught_up(self) -> None:
        try:
            while True:
                self._wake_again = False
                try:
                    await self._pool.execute(f"SELECT {pg.NOTIFY}")
                except Exception:
                    log.debug("a wake-up notification failed; workers poll", exc_info=True)
                    return
                if not self._wake_again:
                    return
        finally:
            self._waking = None

    async def _charge_and_insert(self, connection: Any, task: Task, values: list[Any]) -> float:
        """Insert the task, charging its price; → the run_after stored."""
        if task.price_micros <= 0:
            run_after: float = await connection.fetchval(pg.INSERT_TASK, *values)
            return run_after
        row = await connection.fetchrow(pg.CHARGE_AND_INSERT_TASK, *values)
        if row is None:
            # Nothing paid: the balance is short, or it changed between the statement's
            # snapshot and its row lock (an operator's change committed meanwhile).
            # Decide again with the key's row locked, on its committed state.
            async with connection.transaction():
                locked = await connection.fetchrow(sql.LOCK_BALANCE.postgres, task.key_id)
                balance = locked[0] if locked is not None else 0
                if balance is not None and balance < task.price_micros:
                    raise InsufficientCredits(price=task.price_micros, balance=balance)
                row = await connection.fetchrow(pg.CHARGE_AND_INSERT_TASK, *values)
            # The row is locked and covers the price: the charge cannot miss now.
            assert row is not None, "a locked balance that covers the price was not charged"
        run_after = row[0]
        return run_after

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
            with self._driver_errors:
                if len(batch) == 1:
                    row = await self._pool.fetchrow(sql.GET_TASK.postgres, batch[0][0])
                    rows = [row] if row is not None else []
                else:
                    rows = await self._pool.fetch(pg.GET_TASKS, list({i for i, _ in batch}))
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

    @retried_when_rolled_back
    async def claim(self, *, worker_id: str, limit: int, lease_seconds: float) -> list[Task]:
        with self._driver_errors:
            rows = await self._pool.fetch(pg.CLAIM, self._now(), limit, lease_seconds, worker_id)
        tasks = [task_from_row(row) for row in rows]
        # RETURNING has no order; hand tasks out oldest first like the queue does.
        tasks.sort(key=lambda task: (task.run_after, task.created_at))
        for task in tasks:
            self._announce(task.id)
        return tasks

    async def renew_leases(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_seconds: float
    ) -> set[TaskId]:
        return (await self.keep_leases(leases, lease_seconds=lease_seconds)).renewed

    @retried_when_rolled_back
    async def keep_leases(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_seconds: float
    ) -> LeaseReport:
        if not leases:
            return LeaseReport(renewed=set(), cancel_requested=set())
        ids = [task_id for task_id, _ in leases]
        attempts = [attempt for _, attempt in leases]
        with self._driver_errors:
            rows = await self._pool.fetch(
                pg.RENEW_LEASES, self._now(), lease_seconds, ids, attempts
            )
        return LeaseReport(
            renewed={TaskId(row[0]) for row in rows},
            cancel_requested={TaskId(row[0]) for row in rows if row[1]},
        )

    async def record_progress(self, task_id: TaskId, attempt: int, progress: int) -> bool:
        return await self._changing(pg.RECORD_PROGRESS, task_id, attempt, progress)

    async def _fetch(self, statement: sql.Statement, args: Sequence[Any]) -> list[Any]:
        return await self._read(statement, *args)

    async def claim_webhooks(self, *, limit: int, lease_seconds: float) -> list[DueWebhook]:
        with self._driver_errors:
            rows = await self._pool.fetch(pg.CLAIM_WEBHOOKS, self._now(), limit, lease_seconds)
        return [due_webhook_from_row(row) for row in rows]

    async def _changing(self, statement: str, task_id: TaskId, *args: Any) -> bool:
        """A transition of `task_id`, announced once it applied (`_announce`)."""
        applied = await self._transition(statement, task_id, *args)
        if applied:
            self._announce(task_id)
        return applied

    async def complete(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        image_key: str,
        content_type: str,
        usage: dict[str, Any] | None,
        upstream: str | None = None,
    ) -> bool:
        usage_json = encode_usage(usage)
        return await self._changing(
            pg.COMPLETE, task_id, attempt, image_key, content_type, usage_json, upstream
        )

    async def record_upstream(
        self, task_id: TaskId, attempt: int, *, upstream: str, upstream_task_id: str
    ) -> bool:
        return await self._transition(
            sql.RECORD_UPSTREAM.postgres, task_id, attempt, upstream, upstream_task_id
        )

    @retried_when_rolled_back
    async def _transition(self, statement: str, *args: Any) -> bool:
        """One fenced transition (`{now}`, task id, attempt, …); → whether it applied."""
        with self._driver_errors:
            rows = await self._pool.fetch(statement, self._now(), *args)
        return bool(rows)

    async def fail(self, task_id: TaskId, attempt: int, *, error: str, error_code: str) -> bool:
        return await self._changing(pg.FAIL, task_id, attempt, error, error_code)

    async def requeue(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        delay_seconds: float,
        error: str,
        error_code: str,
    ) -> bool:
        # A task claimable at once wakes the workers; one held back by a retry delay
        # would only wake them to find nothing, so the poll picks it up when it is due.
        statement = pg.REQUEUE_AND_NOTIFY if delay_seconds <= 0 else pg.REQUEUE_LATER
        return await self._changing(statement, task_id, attempt, delay_seconds, error, error_code)

    async def release(self, task_id: TaskId, attempt: int) -> bool:
        return await self._changing(pg.RELEASE_AND_NOTIFY, task_id, attempt)

    @retried_when_rolled_back
    async def rescue_expired(self, *, limit: int = 500) -> RescueReport:
        with self._driver_errors:
            async with self._pool.acquire() as connection, connection.transaction():
                rows = await connection.fetch(pg.RESCUE, self._now(), limit, RESCUE_ERROR)
                if any(row[0] for row in rows):
                    await connection.execute(f"SELECT {pg.NOTIFY}")
        for row in rows:
            self._announce(TaskId(row[1]))
        return RescueReport(
            requeued=tuple(TaskId(row[1]) for row in rows if row[0]),
            failed=tuple(TaskId(row[1]) for row in rows if not row[0]),
        )

    async def count_tasks_by_status(self) -> dict[str, int]:
        return {row[0]: int(row[1]) for row in await self._read(sql.COUNT_BY_STATUS)}

    async def ping(self) -> None:
        with self._driver_errors:
            await self._pool.fetchval("SELECT 1")

    async def schema_revision(self) -> str | None:
        rows = await self._read(sql.SCHEMA_REVISION)
        return str(rows[0][0]) if rows else None

    # Wake-ups ---------------------------------------------------------------

    async def listen_for_queued_tasks(self, callback: Callable[[], None]) -> None:
        """Run until cancelled: call `callback` whenever a task becomes claimable on
        any node (LISTEN/NOTIFY on a dedicated connection that reconnects)."""
        await TaskWakeups(self._dsn, callback).run()

    async def listen_for_task_changes(self, callback: Callable[[TaskId | None], None]) -> None:
        """Run until cancelled: `callback(task_id)` for every transition on any node,
        `callback(None)` after each (re)connect (whatever was missed meanwhile)."""
        await TaskWakeups(
            self._dsn,
            lambda: callback(None),
            channel=CHANGES_CHANNEL,
            on_payload=lambda payload: _each_change(payload, callback),
        ).run()

    async def close(self) -> None:
        for sending in (self._waking, self._sending_changes):
            if sending is not None:
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5.0)
        except UNAVAILABLE:
            # A connection still busy (or wedged) after the grace: close it hard.
            self._pool.terminate()


def _each_change(payload: str, callback: Callable[[TaskId | None], None]) -> None:
    for task_id in payload.split(","):
        if task_id:
            callback(TaskId(task_id))
