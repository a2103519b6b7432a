"""The transactions both stores run statement by statement, each written once.

A procedure is a generator: it yields the statements it needs one at a time, as
`(Statement, arguments)`, is sent back the rows each one returned, and returns its
result. The SQLite store runs procedures with sqlite3 on its writer connection
(synchronously, inside the write's savepoint); the PostgreSQL store with asyncpg,
inside a transaction. So the Idempotency-Key rules and the credit rules exist once,
whatever runs them; only what a database does differently (the hot create and claim,
PostgreSQL's single-statement writes) stays in its store.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from imageforge.apikeys import new_webhook_secret
from imageforge.billing import plan_balance_change
from imageforge.errors import NotFound
from imageforge.ids import KeyId
from imageforge.store import statements as sql
from imageforge.store.base import (
    ApiKeyRecord,
    AuditEntry,
    AuditOf,
    IdempotencyClaim,
    idempotency_mismatch,
)
from imageforge.store.rows import audit_from_row, key_from_row, task_from_row
from imageforge.tasks import Task

T = TypeVar("T")
Step = tuple[sql.Statement, tuple[Any, ...]]
Rows = Sequence[Sequence[Any]]
#: Yields statements, is sent their rows, returns its result.
Procedure = Generator[Step, Rows, T]


def take_idempotency_key(task: Task, claim: IdempotencyClaim) -> Procedure[Task | None]:
    """Take the Idempotency-Key for `task` (→ None), or → the task an earlier request
    made with it (Stripe's rules: same body → that task; another body → 422).

    The insert comes first: a concurrent request with the same key waits on the unique
    index until this transaction ends, then replays what it committed (or takes the key
    itself if this one rolled back). A key older than its TTL is forgotten and taken
    anew; this is the one place that TTL is checked."""
    while True:
        taken = yield (
            sql.TAKE_IDEMPOTENCY_KEY,
            (
                task.key_id,
                claim.key,
                claim.request_hash,
                task.id,
                task.created_at,
            ),
        )
        if taken:
            return None
        rows = yield sql.READ_IDEMPOTENCY_KEY, (task.key_id, claim.key)
        if not rows:
            continue  # pruned in between: take it
        request_hash, task_id, created_at = rows[0]
        if created_at < task.created_at - claim.ttl_seconds:
            yield sql.FORGET_IDEMPOTENCY_KEY, (task.key_id, claim.key)
            continue
        if request_hash != claim.request_hash:
            raise idempotency_mismatch()
        (original,) = yield sql.GET_TASK, (task_id,)
        return task_from_row(original)


def create_key(
    *,
    key_id: KeyId,
    name: str,
    key_hash: str,
    hint: str,
    now: float,
    balance_micros: int | None,
    admin: bool = False,
    task_api: bool = True,
    webhook_secret: str | None = None,
) -> Procedure[ApiKeyRecord]:
    """A limited key (balance given) starts its ledger with a credit entry. Every key has
    a webhook secret: the one given, else a new one."""
    webhook_secret = webhook_secret or new_webhook_secret()
    yield (
        sql.INSERT_KEY,
        (
            key_id,
            name,
            key_hash,
            hint,
            now,
            balance_micros,
            admin,
            task_api,
            webhook_secret,
        ),
    )
    if balance_micros is not None:
        yield sql.BOOK_CREDIT, (key_id, balance_micros, "initial credits", now)
    return ApiKeyRecord(
        id=key_id,
        name=name,
        hint=hint,
        created_at=now,
        revoked_at=None,
        balance_micros=balance_micros,
        admin=admin,
        task_api=task_api,
        webhook_secret=webhook_secret,
    )


def adjust_balance(
    key_id: KeyId,
    *,
    add_micros: int | None,
    set_micros: int | None,
    unlimited: bool,
    note: str | None,
    now: float,
) -> Procedure[ApiKeyRecord]:
    """Add to or set a key's credits with a ledger entry (`billing.plan_balance_change`
    decides the amounts), or make the key unlimited."""
    rows = yield sql.LOCK_BALANCE, (key_id,)
    if not rows:
        raise NotFound(f"no key with id {key_id}", param="key_id", code="key_not_found")
    (balance,) = rows[0]
    if unlimited:
        yield sql.SET_BALANCE, (None, key_id)
    else:
        ((ledger_sum,),) = yield sql.LEDGER_SUM, (key_id,)
        delta, target = plan_balance_change(balance, ledger_sum, add_micros, set_micros)
        yield sql.SET_BALANCE, (target, key_id)
        if delta:
            yield sql.BOOK_CREDIT, (key_id, delta, note, now)
    (updated,) = yield sql.GET_KEY, (key_id,)
    return key_from_row(updated)


def revoke_key(key_id: KeyId, *, now: float) -> Procedure[bool]:
    """Revoke a key that is not revoked yet (→ True), else change nothing (→ False)."""
    rows = yield sql.REVOKE_KEY, (now, key_id)
    return bool(rows)


def audited(procedure: Procedure[T], audit: AuditOf[T] | None) -> Procedure[T]:
    """`procedure`, then its audit entry, in its transaction: an admin action and the
    record of it commit together or not at all."""
    result = yield from procedure
    entry = audit(result) if audit is not None else None
    if entry is not None:
        yield from record_audit(entry)
    return result


class KeyProcedures:
    """The Store methods that are one procedure each, written once for both stores; a
    store supplies `_in_transaction`, which runs a fresh procedure from `make` in one
    transaction (fresh, so that a store may run it again after a rollback)."""

    async def _in_transaction(self, make: Callable[[], Procedure[T]]) -> T:
        raise NotImplementedError

    async def create_key(
        self,
        *,
        key_id: KeyId,
        name: str,
        key_hash: str,
        hint: str,
        now: float,
        balance_micros: int | None = None,
        admin: bool = False,
        task_api: bool = True,
        webhook_secret: str | None = None,
        audit: AuditOf[ApiKeyRecord] | None = None,
    ) -> ApiKeyRecord:
        return await self._in_transaction(
            lambda: audited(
                create_key(
                    key_id=key_id,
                    name=name,
                    key_hash=key_hash,
                    hint=hint,
                    now=now,
                    balance_micros=balance_micros,
                    admin=admin,
                    task_api=task_api,
                    webhook_secret=webhook_secret,
                ),
                audit,
            )
        )

    async def adjust_balance(
        self,
        key_id: KeyId,
        *,
        add_micros: int | None = None,
        set_micros: int | None = None,
        unlimited: bool = False,
        note: str | None = None,
        now: float,
        audit: AuditOf[ApiKeyRecord] | None = None,
    ) -> ApiKeyRecord:
        return await self._in_transaction(
            lambda: audited(
                adjust_balance(
                    key_id,
                    add_micros=add_micros,
                    set_micros=set_micros,
                    unlimited=unlimited,
                    note=note,
                    now=now,
                ),
                audit,
            )
        )

    async def revoke_key(
        self, key_id: KeyId, *, now: float, audit: AuditOf[bool] | None = None
    ) -> bool:
        return await self._in_transaction(lambda: audited(revoke_key(key_id, now=now), audit))


def record_audit(entry: AuditEntry) -> Procedure[AuditEntry]:
    rows = yield (
        sql.INSERT_AUDIT,
        (
            entry.at,
            entry.actor,
            entry.action,
            entry.target,
            orjson.dumps(entry.details).decode(),
            entry.request_id,
        ),
    )
    return replace(entry, id=int(rows[0][0]))


class AuditProcedures:
    """The audit's Store methods, written once for both stores (see `KeyProcedures`); a
    store supplies `_in_transaction` and `_read_rows`."""

    async def _in_transaction(self, make: Callable[[], Procedure[T]]) -> T:
        raise NotImplementedError

    async def _read_rows(self, statement: sql.Statement, *args: Any) -> Rows:
        raise NotImplementedError

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        return await self._in_transaction(lambda: record_audit(entry))

    async def list_audit(self, *, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        rows = await self._read_rows(sql.LIST_AUDIT, before_id, limit)
        return [audit_from_row(row) for row in rows]
