"""When to try a failed task again."""

from __future__ import annotations

import random


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
