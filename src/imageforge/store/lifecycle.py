"""The lifecycle's store methods both stores run (listing, cancel, webhook attempts and
secrets), written once: procedures (see procedures.py) and reads. A store supplies
`_in_transaction`, `_fetch` (one read), `_now()` (the `{now}` of its clock) and
`_announce(task_id)` (the in-process wake-up after a commit)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from imageforge.ids import KeyId, TaskId
from imageforge.store import statements as sql
from imageforge.store.base import (
    CancelOutcome,
    DueWebhook,
    TaskPage,
    WebhookAttempt,
    WebhookOutcome,
    WebhookSecrets,
)
from imageforge.store.procedures import Procedure
from imageforge.store.rows import task_from_row
from imageforge.tasks import CANCELLED_CODE, CANCELLED_ERROR

T = TypeVar("T")


def refund(now: float | None, task_id: str, key_id: str, price: int, model: str) -> Procedure[None]:
    """Give a failed task's charge back, at most once (the ledger's unique index)."""
    if price <= 0:
        return
    booked = yield sql.BOOK_REFUND, (now, key_id, task_id, price, model)
    if booked:
        yield sql.CREDIT_REFUND, (price, key_id)


def cancel_task(now: float | None, task_id: TaskId) -> Procedure[CancelOutcome]:
    rows = yield sql.CANCEL_QUEUED, (now, task_id, CANCELLED_ERROR, CANCELLED_CODE)
    if rows:
        _, key_id, price, model, _callback = rows[0]
        yield from refund(now, task_id, key_id, price, model)
        yield sql.ENQUEUE_WEBHOOK, (now, task_id)
        yield sql.ANNOUNCE_CHANGE, (task_id,)
        return CancelOutcome.CANCELLED
    rows = yield sql.REQUEST_CANCEL, (now, task_id)
    if rows:
        yield sql.ANNOUNCE_CHANGE, (task_id,)
        return CancelOutcome.REQUESTED
    return CancelOutcome.UNCHANGED


def record_webhook_attempt(
    now: float | None, delivery: DueWebhook, outcome: WebhookOutcome
) -> Procedure[bool]:
    rows = yield (
        sql.RECORD_WEBHOOK_ATTEMPT,
        (now, delivery.task_id, delivery.attempts, outcome.state, outcome.retry_in_seconds),
    )
    if not rows:
        return False
    attempt, next_attempt_at = rows[0]
    yield (
        sql.BOOK_WEBHOOK_ATTEMPT,
        (
            now,
            delivery.task_id,
            attempt,
            outcome.status_code,
            outcome.error,
            next_attempt_at if outcome.state == "pending" else None,
        ),
    )
    return True


def webhook_attempts(task_id: TaskId) -> Procedure[list[WebhookAttempt]]:
    rows = yield sql.WEBHOOK_ATTEMPTS, (task_id,)
    return [WebhookAttempt(*row) for row in rows]


def webhook_secrets(now: float, key_id: KeyId) -> Procedure[WebhookSecrets | None]:
    rows = yield sql.WEBHOOK_SECRETS, (key_id,)
    if not rows or rows[0][0] is None:
        return None
    current, previous, until = rows[0]
    return WebhookSecrets(current, previous if until is not None and until > now else None)


def rotate_webhook_secret(
    now: float | None, key_id: KeyId, secret: str, grace_seconds: float
) -> Procedure[bool]:
    rows = yield sql.ROTATE_WEBHOOK_SECRET, (now, key_id, secret, grace_seconds)
    return bool(rows)


class LifecycleProcedures:
    """The Store methods of the lifecycle that are one procedure each."""

    async def _in_transaction(self, make: Callable[[], Procedure[T]]) -> T:
        raise NotImplementedError

    def _now(self) -> float | None:
        raise NotImplementedError

    def _announce(self, task_id: TaskId) -> None:
        raise NotImplementedError

    async def _fetch(self, statement: sql.Statement, args: Sequence[Any]) -> list[Any]:
        """One read, outside any transaction."""
        raise NotImplementedError

    async def list_tasks(
        self,
        key_id: KeyId,
        *,
        limit: int,
        after: TaskId | None = None,
        status: str | None = None,
        model: str | None = None,
    ) -> TaskPage | None:
        before = 2**62  # above every seq
        if after is not None:
            found = await self._fetch(sql.TASK_SEQ, (after, key_id))
            if not found:
                return None
            before = found[0][0]
        filters = tuple(value for value in (status, model) if value is not None)
        statement = sql.LIST_TASKS[status is not None, model is not None]
        rows = await self._fetch(statement, (key_id, before, limit + 1, *filters))
        return TaskPage([task_from_row(row) for row in rows[:limit]], len(rows) > limit)

    async def cancel_task(self, task_id: TaskId) -> CancelOutcome:
        outcome = await self._in_transaction(lambda: cancel_task(self._now(), task_id))
        if outcome is not CancelOutcome.UNCHANGED:
            self._announce(task_id)
        return outcome

    async def record_webhook_attempt(self, delivery: DueWebhook, outcome: WebhookOutcome) -> bool:
        return await self._in_transaction(
            lambda: record_webhook_attempt(self._now(), delivery, outcome)
        )

    async def webhook_attempts(self, task_id: TaskId) -> list[WebhookAttempt]:
        return await self._in_transaction(lambda: webhook_attempts(task_id))

    async def webhook_secrets(self, key_id: KeyId) -> WebhookSecrets | None:
        # Which secrets still sign is decided on this process's clock: a rotation's grace
        # is a day, so seconds of skew between nodes do not matter.
        return await self._in_transaction(lambda: webhook_secrets(time.time(), key_id))

    async def rotate_webhook_secret(
        self, key_id: KeyId, *, secret: str, grace_seconds: float
    ) -> bool:
        return await self._in_transaction(
            lambda: rotate_webhook_secret(self._now(), key_id, secret, grace_seconds)
        )
