"""A running task's progress figure, written to its row at a bounded rate.

Engines may report many figures a second (a diffusion step each); every API node must see
them, so they go to the database, but at most one write per task per `interval_seconds`:
the latest figure is written when the interval since the last write has passed, and the
last figure of a burst is never dropped (a timer writes it). Writes are fenced by the
attempt like every transition, and only ever raise the figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from imageforge.store import Store, StoreUnavailable
from imageforge.tasks import Task

log = logging.getLogger(__name__)


class ProgressReporter:
    def __init__(
        self,
        store: Store,
        task: Task,
        *,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._task = task
        self._interval = interval_seconds
        self._clock = clock
        self._reported: int | None = None
        self._written: int | None = None
        self._last_write = -float("inf")
        self._writer: asyncio.Task[None] | None = None

    def report(self, progress: int) -> None:
        """What engines call (on the event loop): a figure 0–100; lower or equal ones are
        ignored."""
        figure = max(0, min(100, int(progress)))
        if self._reported is not None and figure <= self._reported:
            return
        self._reported = figure
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=f"progress {self._task.id}")

    async def _write(self) -> None:
        while self._reported is not None and self._reported != self._written:
            wait = self._last_write + self._interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            figure = self._reported
            self._last_write = self._clock()
            try:
                applied = await self._store.record_progress(
                    self._task.id, self._task.attempt, figure
                )
            except StoreUnavailable:
                log.debug("progress of %s not written: database unavailable", self._task.id)
                applied = True  # the figure is only advice: the next one may get through
            if not applied:
                return  # not ours any more (or finished): nothing to report
            self._written = figure

    async def aclose(self) -> None:
        """Stop writing (the task is finishing: its outcome says the rest)."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
