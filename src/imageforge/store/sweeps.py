"""The janitor's store methods (sweep leases, retention), written once for both stores.

Each is a procedure (see procedures.py) run in one transaction by the store's
`_in_transaction`; the store supplies `_now()`, the `{now}` of its clock (None on
PostgreSQL: the database's). Sweeps run once an hour on one node, so running the
reads through a transaction too costs nothing that matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from imageforge.ids import TaskId
from imageforge.store import statements as sql
from imageforge.store.procedures import Procedure

T = TypeVar("T")


def take_sweep_lease(
    now: float | None, name: str, holder: str, lease_seconds: float
) -> Procedure[bool]:
    rows = yield sql.TAKE_SWEEP_LEASE, (now, name, holder, lease_seconds)
    return bool(rows)


def images_past_retention(
    finished_before: float, limit: int
) -> Procedure[list[tuple[TaskId, str]]]:
    rows = yield sql.IMAGES_PAST_RETENTION, (finished_before, limit)
    return [(TaskId(row[0]), row[1]) for row in rows]


def forget_images(now: float | None, images: Sequence[tuple[TaskId, str]]) -> Procedure[int]:
    changed = 0
    for task_id, key in images:
        changed += len((yield sql.FORGET_IMAGE, (now, task_id, key)))
    return changed


def delete_finished_tasks(finished_before: float, limit: int) -> Procedure[int]:
    """The rows go with their webhook's outbox row and attempts (long finished: a
    delivery's retries end about a day after its task, before any retention allowed)."""
    rows = yield sql.DELETE_FINISHED_TASKS, (finished_before, limit)
    for (task_id,) in rows:
        yield sql.FORGET_WEBHOOK, (task_id,)
        yield sql.FORGET_WEBHOOK_ATTEMPTS, (task_id,)
    return len(rows)


class SweepProcedures:
    """The `Store` methods of retention and the janitor's lease, for both stores."""

    async def _in_transaction(self, make: Callable[[], Procedure[T]]) -> T:
        raise NotImplementedError

    def _now(self) -> float | None:
        raise NotImplementedError

    async def take_sweep_lease(self, name: str, *, holder: str, lease_seconds: float) -> bool:
        return await self._in_transaction(
            lambda: take_sweep_lease(self._now(), name, holder, lease_seconds)
        )

    async def images_past_retention(
        self, *, finished_before: float, limit: int
    ) -> list[tuple[TaskId, str]]:
        return await self._in_transaction(lambda: images_past_retention(finished_before, limit))

    async def forget_images(self, images: Sequence[tuple[TaskId, str]]) -> int:
        if not images:
            return 0
        return await self._in_transaction(lambda: forget_images(self._now(), images))

    async def delete_finished_tasks(self, *, finished_before: float, limit: int) -> int:
        return await self._in_transaction(lambda: delete_finished_tasks(finished_before, limit))
