"""HTTP clients for one upstream, sharded so that hundreds of calls in flight stay cheap.

Used by the relay engine's httpx clients. httpcore's connection pool does work
proportional to its connection count, a `poll()` syscall per idle connection included, every
time it assigns or releases a request. Measured with `bench/upstream.py` (500 calls in flight,
one worker, when the openai engine still ran on httpx): one 500-connection pool cost ~4.7 ms of
worker CPU per task, most of it in that scan; shards of 32 connections ~2.3 ms, of 4
connections ~2.0 ms (2 was no better). So an upstream gets one client per `SHARD_CONNECTIONS`
connections of its concurrency limit, all built up front and sharing one TLS context, and each
call leases the least busy one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, TypeVar

C = TypeVar("C")

#: Connections per client: small, so each request's pool scan is short. Clients are cheap
#: to have many of because the engines share one TLS context between them.
SHARD_CONNECTIONS = 4


class ClientShards(Generic[C]):
    def __init__(
        self,
        limit: int,
        make: Callable[[int], C],
        close: Callable[[C], Awaitable[None]],
    ) -> None:
        """`make(connections)` builds one client; clients are built on first use."""
        count = max(1, math.ceil(limit / SHARD_CONNECTIONS))
        self.connections_per_client = math.ceil(limit / count)
        self._make = make
        self._close = close
        self._clients: list[C | None] = [None] * count
        self._in_flight = [0] * count

    def build_all(self) -> list[C]:
        """Build every client now (a worker does this before it claims anything)."""
        for index, client in enumerate(self._clients):
            if client is None:
                self._clients[index] = self._make(self.connections_per_client)
        return [client for client in self._clients if client is not None]

    @contextlib.contextmanager
    def lease(self) -> Iterator[C]:
        """The least busy client, for one call."""
        index = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
        client = self._clients[index]
        if client is None:
            client = self._clients[index] = self._make(self.connections_per_client)
        self._in_flight[index] += 1
        try:
            yield client
        finally:
            self._in_flight[index] -= 1

    async def aclose(self) -> None:
        clients, self._clients = self._clients, [None] * len(self._clients)
        for client in clients:
            if client is not None:
                await self._close(client)
