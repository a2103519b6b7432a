"""The runner's scheduler: generation slots, finishing slots, and when to claim."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

#: Longest a generated task waits for the run loop's claims before it is stored.
FINISHING_MAX_DEFER_SECONDS = 0.5


class Slots:
    """The runner's scheduler: how many tasks are generated and finished at once, and
    when the run loop claims more.

    `concurrency` counts tasks being generated. A task whose image is back gives its
    slot to the next queued task at once and finishes (stores the image, records the
    outcome) beside it: an upstream slot never idles while a disk or bucket write and
    a commit complete. At most `concurrency` tasks finish at a time; beyond that, a
    task keeps its generation slot until one finishes, so slow storage holds back new
    claims instead of piling images up in memory.

    Claims go first: a generated task waits until the run loop stops claiming (at most
    FINISHING_MAX_DEFER_SECONDS) before it finishes, and a freed slot counts as a claim
    about to happen, so a wave of answers refills every slot before the bookkeeping
    runs. A claim takes at most `claim_batch` tasks: one claim of hundreds would start
    every call in one loop turn, and every other callback (answers arriving, commits
    finishing) would wait out that long turn.
    """

    def __init__(self, concurrency: int, claim_batch: int, stopping: asyncio.Event) -> None:
        self._concurrency = concurrency
        self._claim_batch = claim_batch
        self._stopping = stopping
        self._generating: set[asyncio.Task[None]] = set()
        self._finishing = asyncio.Semaphore(concurrency)
        # A task was queued since the last claim (set by `work_queued`).
        self._work_hint = False
        # What the idle run loop awaits; resolved directly (one loop turn) when a slot
        # frees, work is queued or the runner stops. A chain of waiters here cost a turn
        # each, and at 500 calls in flight a turn can take tens of milliseconds.
        self._waiter: asyncio.Future[None] | None = None
        # Set while the run loop is not claiming: finishing work waits for it, so that
        # freed slots are refilled (claims, upstream calls going out) before images are
        # stored and outcomes recorded; a wave of answers otherwise interleaves both.
        self._claims_settled = asyncio.Event()
        self._claims_settled.set()

    @property
    def generating(self) -> int:
        return len(self._generating)

    @property
    def has_room(self) -> bool:
        return len(self._generating) < self._concurrency

    def is_generating(self, job: asyncio.Task[None]) -> bool:
        return job in self._generating

    def start_claim(self) -> int:
        """The run loop is about to claim: → how many tasks, 0 when no slot is free."""
        free = self._concurrency - len(self._generating)
        if free <= 0:
            return 0
        self._work_hint = False
        self._claims_settled.clear()
        return min(free, self._claim_batch)

    def settle(self) -> None:
        """The run loop stopped claiming (it waits, backs off or stops)."""
        self._claims_settled.set()

    def occupy(self, job: asyncio.Task[None]) -> None:
        self._generating.add(job)

    def work_queued(self) -> None:
        self._work_hint = True
        if self.has_room:
            self.nudge()

    def nudge(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def free(self, job: asyncio.Task[None] | None) -> None:
        """The job stopped generating (its image is back, it failed, or it ended)."""
        if job in self._generating:
            self._generating.discard(job)
            if not self._stopping.is_set():
                # The run loop claims for this slot next; finishing waits for that claim.
                self._claims_settled.clear()
            self.nudge()

    @contextlib.asynccontextmanager
    async def finishing(self, job: asyncio.Task[None] | None) -> AsyncIterator[None]:
        """Trade the generation slot for a finishing one (waiting while all are taken)."""
        async with self._finishing:
            self.free(job)
            if not self._claims_settled.is_set():
                # Claims first, but a steady stream of them must not starve finishing.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FINISHING_MAX_DEFER_SECONDS):
                        await self._claims_settled.wait()
            yield

    async def wait_for_work(self, poll_interval_seconds: float) -> None:
        """Until a slot frees, a task is queued (when there is room), the poll interval
        passes (covering wake-ups lost between nodes) or the runner stops."""
        if self._stopping.is_set() or (self.has_room and self._work_hint):
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(poll_interval_seconds, self.nudge)
        self.settle()
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
