"""Requests per minute per API key, on the `limits` library.

In memory for one node; shared through Redis when `redis_url` is set, so that
several API nodes enforce one limit together.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from imageforge.errors import RateLimited


class RequestRateLimiter:
    def __init__(self, per_minute: int, *, redis_url: str | None = None) -> None:
        self._item = RateLimitItemPerMinute(per_minute)
        storage: Storage
        if redis_url:
            # limits' async Redis storage speaks the "async+redis://" scheme; the redis-py
            # client is the one the `redis` extra installs.
            storage = RedisStorage(
                redis_url.replace("redis://", "async+redis://", 1), implementation="redispy"
            )
        else:
            storage = MemoryStorage()
        self._limiter = FixedWindowRateLimiter(storage)
        self._per_minute = per_minute

    async def check(self, key_id: str) -> None:
        if await self._limiter.hit(self._item, "imageforge", key_id):
            return
        stats = await self._limiter.get_window_stats(self._item, "imageforge", key_id)
        raise RateLimited(
            f"rate limit exceeded: at most {self._per_minute} requests per minute per API key",
            retry_after=math.ceil(stats.reset_time - time.time()),
        )
