"""`GET /v1/result/{id}/events`: a task's changes as server-sent events.

Each event's `data` is the task object exactly as `GET /v1/result/{id}` answers at that
moment; `event:` is `status` when the status changed (and for the first event), `progress`
when only the figure moved; `id:` is a number derived from the task's state that only grows
along the state machine (attempt, stage, progress), so a client resuming with
`Last-Event-ID` gets only what it has not seen, with nothing kept per stream or task. The
terminal event ends the stream, and a finished task's stream is that one event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from imageforge.tasks import Task, TaskStatus

#: Above every state of a task that has not finished, whatever its attempt.
_TERMINAL = 10**12
_PER_ATTEMPT = 1000


def event_id(task: Task) -> int:
    """queued before attempt n → n·1000; processing attempt n → n·1000 + 1 (+ 1 + progress);
    finished → 10¹². A re-queued task waits for its next attempt, so it sorts after the
    attempt that ran."""
    if task.status.is_terminal:
        return _TERMINAL
    if task.status is TaskStatus.QUEUED:
        return (task.attempt + 1) * _PER_ATTEMPT
    progress = -1 if task.progress is None else task.progress
    return task.attempt * _PER_ATTEMPT + 2 + progress


def parse_last_event_id(raw: str | None) -> int | None:
    """An id this server sent, or None (an unknown id replays from the task's state now)."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        return None
    return int(raw)


def _kind(task: Task, previous: int | None) -> str:
    """`progress` when the event before was the same attempt processing; `status` else."""
    if task.status is not TaskStatus.PROCESSING or previous is None:
        return "status"
    same_attempt = previous // _PER_ATTEMPT == task.attempt and previous % _PER_ATTEMPT != 0
    return "progress" if same_attempt and previous < _TERMINAL else "status"


def format_event(kind: str, ident: int, data: dict[str, Any]) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (ident, kind.encode(), orjson.dumps(data))


KEEPALIVE = b": keep-alive\n\n"


async def task_events(
    states: AsyncIterator[Task | None],
    body_of: Callable[[Task], dict[str, Any]],
    *,
    last_event_id: int | None,
) -> AsyncIterator[bytes]:
    """The stream's bytes: `states` is `ImageService.follow` (a task after each change, None
    for a quiet interval); `body_of` makes the poll's object of a task."""
    previous = last_event_id
    yield b"retry: 2000\n\n"
    async for task in states:
        if task is None:
            yield KEEPALIVE
            continue
        ident = event_id(task)
        if ident != _TERMINAL and previous is not None and ident <= previous:
            continue  # seen before the client reconnected
        yield format_event(_kind(task, previous), ident, body_of(task))
        previous = ident
        if task.status.is_terminal:
            return
