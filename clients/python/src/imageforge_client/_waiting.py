"""Waiting for a task to finish, the best way the server allows.

1. Server-sent events (`/v1/result/{id}/events`) where listed: every status change and
   progress figure as it happens; reconnects resume with `Last-Event-ID`.
2. Long-poll (`?wait=N`) where listed: one held request at a time.
3. Otherwise polling, ~1 s at first, growing to ~5 s: all that any GPT Image 2 API offers.

An event stream that keeps failing falls back to 2 or 3. The caller's deadline bounds it all;
an event read in progress can overrun it by up to the server's keep-alive interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import httpx
from pydantic import ValidationError

from imageforge_client._config import ClientState
from imageforge_client._operations import (
    CreateOptions,
    capabilities,
    create,
    get,
    open_stream,
    require_completed,
    result_path,
)
from imageforge_client._sse import ServerSentEvent, SSEDecoder
from imageforge_client._steps import ApiRequest, CloseStream, Notify, Operation, ReadStream, Sleep
from imageforge_client.errors import TaskTimeoutError
from imageforge_client.models import TaskResult

#: Seconds one long-poll holds (the route allows 1-60): below the idle timeouts of most
#: proxies, so a quiet request is not cut in the middle.
LONG_POLL_SECONDS = 30
#: A quiet event stream (no event, no keep-alive) is reopened after this many seconds.
EVENTS_READ_TIMEOUT = 60.0


class _Watch:
    """The deadline, and the task as last seen: a `Notify` only when something changed."""

    def __init__(self, task_id: str, timeout: float | None, clock: Callable[[], float]) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self.last: TaskResult | None = None

    def remaining(self) -> float:
        """Seconds left; raises `TaskTimeoutError` once none are."""
        if self._deadline is None:
            return math.inf
        left = self._deadline - self._clock()
        if left <= 0:
            raise TaskTimeoutError(self.task_id, self.timeout or 0.0, self.last)
        return left

    def see(self, task: TaskResult) -> Operation[TaskResult]:
        before = self.last
        self.last = task
        if before is None or (before.status, before.progress) != (task.status, task.progress):
            yield Notify(task)
        return task


def generate(
    state: ClientState, prompt: str, options: CreateOptions, *, timeout: float | None
) -> Operation[TaskResult]:
    """Create, then wait: the completed task, or `TaskFailedError` / `TaskTimeoutError`."""
    created = yield from create(state, prompt, options)
    start = TaskResult.from_created(created)
    return require_completed((yield from wait(state, created.id, timeout=timeout, start=start)))


def wait(
    state: ClientState, task_id: str, *, timeout: float | None, start: TaskResult | None = None
) -> Operation[TaskResult]:
    """The task once terminal (completed or failed); `TaskTimeoutError` after `timeout`."""
    watch = _Watch(task_id, timeout, state.clock)
    if start is not None:
        yield from watch.see(start)
    offered = yield from capabilities(state)
    if offered.events:
        task = yield from _follow_events(state, watch)
        if task is not None:
            return task
        start = None  # the stream gave up: look at the task at once
    if offered.long_poll:
        return (yield from _long_poll(state, watch))
    return (yield from _poll(state, watch, at_once=start is None))


def _poll(state: ClientState, watch: _Watch, *, at_once: bool) -> Operation[TaskResult]:
    schedule = state.config.polling
    if at_once:
        task = yield from watch.see((yield from get(state, watch.task_id)))
        if task.done:
            return task
    poll = 0
    while True:
        yield Sleep(min(schedule.interval(poll), watch.remaining()))
        poll += 1
        task = yield from watch.see((yield from get(state, watch.task_id)))
        if task.done:
            return task


def _long_poll(state: ClientState, watch: _Watch) -> Operation[TaskResult]:
    quick = 0
    while True:
        remaining = watch.remaining()
        seconds = LONG_POLL_SECONDS if math.isinf(remaining) else math.ceil(remaining)
        seconds = max(1, min(LONG_POLL_SECONDS, seconds))
        started = state.clock()
        task = yield from watch.see((yield from get(state, watch.task_id, wait=seconds)))
        if task.done:
            return task
        if state.clock() - started < min(1.0, seconds / 2):
            # It answered at once although unfinished: the wait is not being honoured here
            # (a proxy, an older node). Back off like polling rather than spin.
            yield Sleep(min(state.config.polling.interval(quick), watch.remaining()))
            quick += 1
        else:
            quick = 0


def _follow_events(state: ClientState, watch: _Watch) -> Operation[TaskResult | None]:
    """The terminal task from the event stream; None when the stream keeps failing."""
    policy = state.config.retry
    url = state.config.url(result_path(watch.task_id, "/events"))
    last_event_id: str | None = None
    failures = 0
    while failures <= policy.max_retries:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        read_timeout = min(EVENTS_READ_TIMEOUT, watch.remaining() + 1.0)
        stream = yield from open_stream(
            state, ApiRequest("GET", url, headers=headers, read_timeout=read_timeout)
        )
        if not stream.response.headers.get("content-type", "").startswith("text/event-stream"):
            yield CloseStream(stream)
            return None
        decoder = SSEDecoder()
        heard = False
        outcome: TaskResult | None = None
        while outcome is None:
            try:
                chunk: bytes = yield ReadStream(stream)
            except httpx.TransportError:
                break  # cut or quiet too long: reopen, resuming after the last event seen
            if not chunk:
                break  # ended before the terminal event
            for event in decoder.feed(chunk):
                task = _task_of(event, watch.task_id)
                if task is not None:
                    heard = True
                    yield from watch.see(task)
                    if task.done:
                        outcome = task
                        break
            watch.remaining()
        yield CloseStream(stream)
        if outcome is not None:
            return outcome
        last_event_id = decoder.last_event_id or last_event_id
        failures = 0 if heard else failures + 1
        if failures:
            yield Sleep(min(policy.backoff(failures - 1, state.rand), watch.remaining()))
    return None


def _task_of(event: ServerSentEvent, task_id: str) -> TaskResult | None:
    """Each event's data is the task object; events of other shapes are skipped."""
    try:
        task = TaskResult.model_validate_json(event.data)
    except ValidationError:
        return None
    return task if task.id == task_id else None
