"""How many decoded pixels one process holds at once: a semaphore counted in pixels.

A reference within the per-image cap may still be 50 million pixels (200 MB as RGBA);
a few clients sending several each would exhaust the memory of a worker that decodes
them all at once. Every reference decode holds its pixels here first. Waiters are
served in order, so a large image is not starved by a stream of small ones; one larger
than the whole budget waits until it can be decoded alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class PixelBudget:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget needs at least 1 pixel (got {capacity})")
        self.capacity = capacity
        #: Pixels held now.
        self.in_use = 0
        #: The most pixels ever held at once: what an operator (or a test) can check.
        self.peak = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold `pixels` (at most the whole budget) for the duration of the block."""
        wanted = min(max(pixels, 0), self.capacity)
        await self._acquire(wanted)
        try:
            yield
        finally:
            self._release(wanted)

    async def _acquire(self, wanted: int) -> None:
        if not self._waiting and self.in_use + wanted <= self.capacity:
            self._take(wanted)
            return
        entry = (wanted, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self._release(wanted)  # granted just before the cancellation landed
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
                self._wake()  # it may have been the head that the others waited behind
            raise

    def _take(self, pixels: int) -> None:
        self.in_use += pixels
        self.peak = max(self.peak, self.in_use)

    def _release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            wanted, future = self._waiting[0]
            if future.cancelled():
                self._waiting.popleft()
                continue
            if self.in_use + wanted > self.capacity:
                return
            self._waiting.popleft()
            self._take(wanted)
            future.set_result(None)
