"""Requests per minute enforced together by several API nodes sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import make_settings, start_harness


async def test_two_nodes_share_one_limit_through_the_database(tmp_path: Path, pg_url: str) -> None:
    nodes = []
    for name in ("a", "b"):
        settings = make_settings(tmp_path / name, database_url=pg_url, rate_limit_per_minute=6)
        nodes.append(await start_harness(settings, run_worker=False))
    try:
        (_, first), (_, second) = nodes
        secret = await first.new_key("shared")
        await second.runtime.keyring.refresh()
        # Counters are per clock minute: start well inside one.
        if time.time() % 60 > 55:
            await asyncio.sleep(60 - time.time() % 60 + 0.1)
        statuses = []
        for i in range(8):
            node = first if i % 2 == 0 else second
            statuses.append((await node.create(secret)).status_code)
        assert statuses.count(200) == 6 and statuses.count(429) == 2, statuses
        limited = await second.create(secret)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
    finally:
        for lifespan, harness in nodes:
            await harness.client.aclose()
            await lifespan.__aexit__(None, None, None)
