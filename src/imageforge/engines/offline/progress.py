"""How far along a render is, from the render process back to the engine's caller.

A render runs in another process, in one call; each stage it finishes is worth a share of
the whole, and the render process sends that figure up one pipe shared by the pool. One
thread in the engine's process reads the pipe and hands each figure to the event loop of
the request it belongs to (a token per render routes it). Before the engine reports its own
100 it waits until the pipe has been read past the render's last figure, so none is lost and
none arrives after the 100.

A pipe rather than a `multiprocessing.Queue`: a queue's writers share a lock, which a render
process killed mid-write (for memory) would hold forever; each message here is one `write`
of a few dozen bytes, which POSIX makes atomic for pipes (under PIPE_BUF), so a killed writer
leaves nothing half-written, and no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

#: The figure reached when each stage of a render ends: the stages' measured shares of its
#: time (1024x1024 to 3840x2160, three prompts, every quality): planning (caption layout,
#: references decoded, scene plan) 0-3 %, the scene 24-47 %, caption and thumbnails 2-8 %,
#: PNG encoding 46-66 %, after which the engine reports 100.
PLANNED = 2
SCENE_PAINTED = 40
CAPTIONED = 45

Report = Callable[[int], None]
#: Longest wait for a render's last figures once its bytes are back; only a reader thread
#: starved of the CPU takes more than a millisecond.
DRAIN_SECONDS = 1.0

# The render process's end of the pipe, set once by `install_sender` when the process starts.
_sender: Connection | None = None


def install_sender(sender: Connection) -> None:
    """In a render process: send figures up `sender` from now on."""
    global _sender
    _sender = sender


def sender_for(token: int | None) -> Report | None:
    """In a render process: what reports the figures of render `token` (None: nobody is
    listening, nothing to send)."""
    if token is None or _sender is None:
        return None
    sender = _sender

    def send(figure: int) -> None:
        # Progress is advice: a pipe whose reader is gone must not fail the render.
        with contextlib.suppress(OSError):
            sender.send((token, figure))

    return send


@dataclass(frozen=True)
class _Listener:
    loop: asyncio.AbstractEventLoop
    report: Report
    #: Set when the pipe has been read up to the end of this render's figures.
    drained: asyncio.Future[None]


class ProgressChannel:
    """The engine's end: one pipe and one reading thread per process pool."""

    def __init__(self) -> None:
        self._receiver, self.sender = multiprocessing.Pipe(duplex=False)
        self._tokens = itertools.count()
        self._listeners: dict[int, _Listener] = {}
        self._reader = threading.Thread(
            target=self._relay, name="offline render progress", daemon=True
        )
        self._reader.start()

    @contextlib.asynccontextmanager
    async def listening(self, report: Report | None) -> AsyncIterator[int | None]:
        """A token for one render whose figures go to `report`, on this event loop (None
        when there is no `report`). When the block ends without an error, every figure the
        render sent has been handed over."""
        if report is None:
            yield None
            return
        token = next(self._tokens)
        loop = asyncio.get_running_loop()
        listener = _Listener(loop, report, loop.create_future())
        self._listeners[token] = listener
        try:
            yield token
            # The render sent its figures up the pipe before its result came back: a marker
            # sent now is read after them. Waiting for it costs one trip through the pipe.
            with contextlib.suppress(OSError, TimeoutError):
                self.sender.send((token, None))
                await asyncio.wait_for(listener.drained, DRAIN_SECONDS)
        finally:
            del self._listeners[token]

    def close(self) -> None:
        """Stop the reading thread (after the pool's processes are gone) and the pipe."""
        with contextlib.suppress(OSError):
            self.sender.send(None)
        self._reader.join()
        self.sender.close()
        self._receiver.close()

    def _relay(self) -> None:
        while True:
            try:
                message = self._receiver.recv()
            except (EOFError, OSError):
                return
            if message is None:
                return
            token, figure = message
            listener = self._listeners.get(token)
            if listener is not None:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    listener.loop.call_soon_threadsafe(self._deliver, token, figure)

    def _deliver(self, token: int, figure: int | None) -> None:
        # On the request's loop, in the order the figures were read.
        listener = self._listeners.get(token)
        if listener is None:
            return  # the render has returned since: its caller has moved on
        if figure is not None:
            listener.report(figure)
        elif not listener.drained.done():
            listener.drained.set_result(None)
