"""SIGTERM and SIGINT for the long-running commands: a stop, never a crash.

`STOP.install()` is the first thing `main()` does, so from then on a signal is only
remembered: start-up goes on to the next point where it can stop cleanly (before the next
step, or by cancelling a wait on the database), and a process that already runs drains.
A service manager stopping a server that is still connecting to PostgreSQL therefore gets
exit 0, not 143, and `worker --processes N` never sees a child die of a signal it sent.

This module imports nothing heavy: it must be installed before anything slow is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether a stop was asked for, and what to tell when it is."""

    def __init__(self) -> None:
        self.requested = False
        self._callbacks: list[Callable[[], None]] = []

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        # A supervisor starts its children with these blocked (supervisor.py), so that a
        # stop sent while a child's interpreter was still starting waits for this handler
        # instead of killing it; pending, it is delivered here, at once.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        for callback in list(self._callbacks):
            callback()

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when a stop is asked for (at once if it was); → unsubscribe."""
        self._callbacks.append(callback)
        if self.requested:
            callback()
        return lambda: self._callbacks.remove(callback)

    async def wait(self) -> None:
        """Until a stop is asked for."""
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()

        # The handler runs between two bytecodes of the main thread, perhaps inside the
        # loop's own code: call_soon_threadsafe is the safe way in.
        def wake() -> None:
            loop.call_soon_threadsafe(stopped.set)

        unsubscribe = self.on_stop(wake)
        try:
            await stopped.wait()
        finally:
            unsubscribe()

    async def unless_stopped(self, work: Awaitable[T]) -> tuple[bool, T | None]:
        """Run `work` until it finishes or a stop is asked for, whichever comes first;
        → (finished, result). A stop cancels `work`."""
        job = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if job.done():
            return True, job.result()
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        return False, None


def run_unless_stopped(make: Callable[[], Coroutine[Any, Any, T]]) -> tuple[bool, T | None]:
    """`asyncio.run(make())` that gives up when a stop is asked for first."""
    return asyncio.run(STOP.unless_stopped(make()))


#: The process's one stop request; `imageforge.cli.main` installs it.
STOP = StopRequest()
