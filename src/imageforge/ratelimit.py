"""Requests per minute per API key.

Three homes for the counters, picked from the deployment:
- one node on SQLite: in process memory (the `limits` library);
- several nodes, Redis configured: Redis, through `limits`;
- several nodes on PostgreSQL without Redis: the database, one UPSERT per request
  into a per-minute counter row, so every API node enforces one limit together.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from imageforge.errors import RateLimited
from imageforge.ids import KeyId
from imageforge.store import Store

WINDOW_SECONDS = 60


class RequestRateLimiter(Protocol):
    async def check(self, key_id: KeyId) -> None:
        """Count one request; raise RateLimited (429) past the limit."""
        ...

    async def aclose(self) -> None: ...


def _limited(per_minute: int, retry_after: float) -> RateLimited:
    return RateLimited(
        f"rate limit exceeded: at most {per_minute} requests per minute per API key",
        retry_after=math.ceil(retry_after),
    )


class LimitsRateLimiter:
    """Fixed one-minute windows in memory, or in Redis when `redis_url` is set."""

    def __init__(self, per_minute: int, *, redis_url: str | None = None) -> None:
        self._item = RateLimitItemPerMinute(per_minute)
        self._pool: Any = None
        storage: Storage
        if redis_url:
            import redis.asyncio

            # Our own pool, so that `aclose` can close its connections: limits has no close.
            self._pool = redis.asyncio.ConnectionPool.from_url(redis_url)
            # limits' async Redis storage speaks the "async+redis://" scheme; the redis-py
            # client is the one the `redis` extra installs.
            storage = RedisStorage(
                redis_url.replace("redis://", "async+redis://", 1),
                implementation="redispy",
                connection_pool=self._pool,
            )
        else:
            storage = MemoryStorage()
        self._limiter = FixedWindowRateLimiter(storage)
        self._per_minute = per_minute

    async def check(self, key_id: KeyId) -> None:
        if await self._limiter.hit(self._item, "imageforge", key_id):
            return
        stats = await self._limiter.get_window_stats(self._item, "imageforge", key_id)
        raise _limited(self._per_minute, stats.reset_time - time.time())

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


class DatabaseRateLimiter:
    """Fixed one-minute windows counted in the shared database."""

    def __init__(self, per_minute: int, store: Store) -> None:
        self._per_minute = per_minute
        self._store = store

    async def check(self, key_id: KeyId) -> None:
        now = time.time()
        window_start = int(now) // WINDOW_SECONDS * WINDOW_SECONDS
        hits = await self._store.count_request(key_id, window_start=window_start)
        if hits > self._per_minute:
            raise _limited(self._per_minute, window_start + WINDOW_SECONDS - now)

    async def aclose(self) -> None:
        return None  # the store is closed by its owner


def build_rate_limiter(
    per_minute: int, *, store: Store, shared_database: bool, redis_url: str | None
) -> RequestRateLimiter:
    if redis_url or not shared_database:
        return LimitsRateLimiter(per_minute, redis_url=redis_url)
    return DatabaseRateLimiter(per_minute, store)
