"""Task change notifications inside one process: what wakes long-polls and event streams.

One hub per process. It is told of every change from two places: the store's in-process
hook (`Store.watch_changes`: each transition this process commits) and, where the store
announces changes across processes (`AnnouncesChanges`: PostgreSQL LISTEN/NOTIFY, or
SQLite's file version for an API without a worker of its own), one listener per process.
A waiter never reads the database while it waits: it is woken, then reads its task once.
A wake-up says only "look again", so a duplicate or a spurious one costs one read, and
one lost while LISTEN reconnects is covered by the reconnect's wake-all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Subscription:
    """Changes of one task since the subscription began: `wait` returns at once when one
    came before it was called, so a change between reading a task and waiting is never
    missed."""

    __slots__ = ("_changed", "task_id")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._changed = asyncio.Event()

    def _wake(self) -> None:
        self._changed.set()

    async def wait(self, seconds: float) -> bool:
        """Until the task changes (True) or `seconds` pass (False)."""
        if not self._changed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, seconds)):
                    await self._changed.wait()
        changed = self._changed.is_set()
        self._changed.clear()
        return changed


class TaskEvents:
    """Subscriptions by task id; `notify(task_id)` wakes that task's, `notify(None)` all."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = {}

    @property
    def waiting(self) -> int:
        """Subscriptions open now (tests and benchmarks read it)."""
        return sum(len(group) for group in self._subscriptions.values())

    @contextlib.contextmanager
    def subscribe(self, task_id: str) -> Iterator[Subscription]:
        subscription = Subscription(task_id)
        self._subscriptions.setdefault(task_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            group = self._subscriptions.get(task_id)
            if group is not None:
                group.discard(subscription)
                if not group:
                    del self._subscriptions[task_id]

    def notify(self, task_id: str | None) -> None:
        if task_id is None:
            for group in self._subscriptions.values():
                for subscription in group:
                    subscription._wake()
            return
        for subscription in self._subscriptions.get(task_id, ()):
            subscription._wake()

    async def wait_for_change(self, task_id: str, seconds: float) -> bool:
        """Until `task_id` changes (True) or `seconds` pass (False). A change that came
        before this call is not seen: callers that read the task first and then wait use
        `subscribe` around both."""
        with self.subscribe(task_id) as subscription:
            return await subscription.wait(seconds)
