"""When to retry a request and how long to wait first; how often to poll a task.

Pure rules (no I/O): the random source and the clock are the caller's, so tests can pin them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx


def retry_after_seconds(
    value: str | None, *, now: Callable[[], datetime] | None = None
) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3).

    None when absent or unreadable; a date in the past is 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 and asctime forms carry no zone; HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    current = now() if now is not None else datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


#: Errors raised before the request left this machine: retrying them can never repeat it.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, honouring `Retry-After`.

    `max_retries` is the number of retries after the first try (0 turns retrying off). A
    `Retry-After` longer than `max_wait` is not waited for: the error is raised at once, so a
    caller is never stuck behind a server that asks for an hour.
    """

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_wait: float = 60.0

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry number `retry` (0-based) when the server named none."""
        delay: float = min(self.max_delay, self.base_delay * 2.0**retry)
        return delay * (0.75 + 0.25 * rand())

    def delay_after_status(
        self, response: httpx.Response, retry: int, rand: Callable[[], float] = random.random
    ) -> float | None:
        """How long to wait before retrying this answer; None: do not retry it."""
        if retry >= self.max_retries:
            return None
        named = retry_after_seconds(response.headers.get("retry-after"))
        if named is None:
            return self.backoff(retry, rand)
        return named if named <= self.max_wait else None

    def delay_after_error(
        self, retry: int, rand: Callable[[], float] = random.random
    ) -> float | None:
        """How long to wait before retrying after a connection error; None: do not."""
        return None if retry >= self.max_retries else self.backoff(retry, rand)


@dataclass(frozen=True)
class PollSchedule:
    """Polling a task without long-poll or events: ~1 s at first, growing to ~5 s.

    A task usually finishes in seconds, so the first polls come quickly; a long 4K render
    should not cost a request a second for minutes.
    """

    initial: float = 1.0
    factor: float = 1.5
    maximum: float = 5.0

    def interval(self, poll: int) -> float:
        """The wait before poll number `poll` (0-based)."""
        value: float = min(self.maximum, self.initial * self.factor**poll)
        return value
