"""LISTEN for queued tasks on a dedicated PostgreSQL connection and wake the worker.

Notifications are an optimisation, never the only way work is found: they are lost
while the connection is down, and a half-open TCP connection can swallow them
silently (pg-boss#850, good_job#296). So the worker still polls (≤ 1 s), this
listener pings its connection so a dead one is noticed within seconds, reconnects
with backoff whenever the connection drops, and wakes the worker once after each
(re)connect to cover whatever was queued while it was deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

#: The channel insert_task, requeue, release and rescue notify in the same transaction.
CHANNEL = "imageforge_tasks"
#: The channel the ids of changed tasks go to, comma-separated, after their transitions
#: commit (long-polls, events).
CHANGES_CHANNEL = "imageforge_task_changes"
#: PostgreSQL refuses a payload of 8,000 bytes or more.
MAX_PAYLOAD_BYTES = 7_900
#: application_name of the listening connection (operators and tests find it by this).
APPLICATION_NAME = "imageforge-wakeups"


def change_payloads(task_ids: Sequence[str]) -> list[str]:
    """The ids as comma-separated payloads, each under PostgreSQL's payload limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for task_id in task_ids:
        if current and size + 1 + len(task_id) > MAX_PAYLOAD_BYTES:
            payloads.append(",".join(current))
            current, size = [], 0
        current.append(task_id)
        size += len(task_id) + 1
    if current:
        payloads.append(",".join(current))
    return payloads


class TaskWakeups:
    """Calls `callback` (no arguments, on the event loop) whenever a task may be claimable;
    with `on_payload`, each notification goes there with its payload instead, and
    `callback` is called only after each (re)connect (whatever was missed meanwhile)."""

    def __init__(
        self,
        dsn: str,
        callback: Callable[[], None],
        *,
        channel: str = CHANNEL,
        on_payload: Callable[[str], None] | None = None,
        connect_timeout: float = 5.0,
        ping_interval: float = 5.0,
        max_backoff: float = 2.0,
    ) -> None:
        self._dsn = dsn
        self._callback = callback
        self._channel = channel
        self._on_payload = on_payload
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        #: Set while LISTEN is active; tests and health checks wait on it.
        self.listening = asyncio.Event()
        #: Successful (re)connections so far.
        self.connections = 0
        #: Server pid of the current listening connection, None while disconnected.
        self.backend_pid: int | None = None

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after every drop."""
        backoff = 0.1
        while True:
            try:
                connection = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout,
                    server_settings={"application_name": APPLICATION_NAME},
                )
            except Exception as exc:  # refused, DNS, auth, too many connections, …
                log.warning("task wake-ups: cannot connect (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(self._max_backoff, backoff * 2)
                continue
            try:
                await self._listen(connection)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("task wake-ups: connection lost (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                self.backend_pid = None
                await _close_quietly(connection)

    async def _listen(self, connection: Any) -> None:
        dropped = asyncio.Event()
        connection.add_termination_listener(lambda _connection: dropped.set())
        await connection.add_listener(self._channel, self._on_notification)
        self.connections += 1
        self.backend_pid = connection.get_server_pid()
        self.listening.set()
        # Whatever was queued while we were not listening would otherwise wait for a poll.
        self._callback()
        while not dropped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dropped.wait(), timeout=self._ping_interval)
            if not dropped.is_set():
                # A round trip proves the connection is alive; a half-open one
                # times out here instead of swallowing notifications forever.
                await connection.execute("SELECT 1", timeout=self._connect_timeout)

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if self._on_payload is not None:
            self._on_payload(payload)
        else:
            self._callback()


async def _close_quietly(connection: Any) -> None:
    if connection.is_closed():
        return
    try:
        await asyncio.wait_for(connection.close(), timeout=1.0)
    except asyncio.CancelledError:
        connection.terminate()
        raise
    except Exception:
        # The socket is wedged or already gone: drop it without the goodbye.
        connection.terminate()
