"""When to try again: a failed task (backoff), and a write through an outage (deadline)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def retry_delay(
    attempt: int,
    *,
    base_seconds: float,
    max_seconds: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with "equal jitter", never sooner than the upstream's Retry-After.

    The random half of the delay spreads retries of many
    tasks that failed together, so they do not hit a recovering upstream at once.
    """
    cap = min(max_seconds, base_seconds * (2 ** max(0, attempt - 1)))
    delay = (rng or random).uniform(cap / 2, cap) if cap > 0 else 0.0
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_seconds))
    return delay


async def retry_until_deadline(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: type[BaseException],
    within_seconds: float,
    keep_trying: Callable[[], bool] = lambda: True,
    on_retry: Callable[[float], None] = lambda delay: None,
    clock: Callable[[], float] = time.monotonic,
    first_delay: float = 0.1,
    max_delay: float = 2.0,
) -> tuple[T, int]:
    """`operation()` until it returns; → (its result, how many times it was retried).

    A `retry_on` error is retried after a delay that starts at `first_delay` and
    doubles to `max_delay`, as long as `keep_trying()` and the next try would start
    within `within_seconds` of the first; then it is raised. Only safe for an
    operation that may run twice (the worker's writes are fenced by the attempt).
    `clock` is only ever subtracted from itself."""
    give_up_at = clock() + within_seconds
    delay = first_delay
    retries = 0
    while True:
        try:
            return await operation(), retries
        except retry_on:
            if not keep_trying() or clock() + delay > give_up_at:
                raise
        on_retry(delay)
        await asyncio.sleep(delay)
        delay = min(max_delay, delay * 2)
        retries += 1
