"""LISTEN/NOTIFY wake-ups: idle workers start at once; lost notifications cost a poll."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imageforge.runtime import Runtime
from imageforge.settings import Settings
from imageforge.store import Store, open_store
from imageforge.store.urls import asyncpg_dsn
from imageforge.store.wakeups import APPLICATION_NAME, TaskWakeups
from tests.pg import pg_connect
from tests.test_store_contract import Clock, claim_one, make_task

POLL_SECONDS = 1.0


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self, timeout: float = 2.0) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    opened = await open_store(pg_url)
    try:
        yield opened
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def listening(url: str, wakes: Wakes) -> AsyncIterator[TaskWakeups]:
    wakeups = TaskWakeups(asyncpg_dsn(url), wakes, ping_interval=0.5)
    runner = asyncio.create_task(wakeups.run())
    try:
        await asyncio.wait_for(wakeups.listening.wait(), 5)
        await wakes.next()  # the catch-up wake after every (re)connect
        yield wakeups
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def terminate_listeners(url: str) -> int:
    admin = await pg_connect(url)
    try:
        return len(
            await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1"
                " AND datname = current_database()",
                APPLICATION_NAME,
            )
        )
    finally:
        await admin.close()


async def test_every_transition_to_claimable_wakes_listeners(pg_url: str) -> None:
    wakes = Wakes()
    clock = Clock()
    store = await open_store(pg_url, clock=clock)
    try:
        async with listening(pg_url, wakes):
            await store.insert_task(make_task())
            await wakes.next()
            task = await claim_one(store, lease=1)
            assert await store.requeue(
                task.id, task.attempt, delay_seconds=0, error="x", error_code="x"
            )
            await wakes.next()
            task = await claim_one(store, lease=1)
            assert await store.release(task.id, task.attempt)
            await wakes.next()
            task = await claim_one(store, lease=1)
            clock.advance(5)
            assert (await store.rescue_expired()).requeued == (task.id,)
            await wakes.next()
            # A retry held back by its delay wakes nobody: there is nothing to claim yet.
            task = await claim_one(store, lease=1)
            assert await store.requeue(
                task.id, task.attempt, delay_seconds=60, error="x", error_code="x"
            )
            with pytest.raises(TimeoutError):
                await wakes.next(timeout=0.5)
    finally:
        await store.close()


async def test_a_burst_of_creates_wakes_listeners_with_a_few_notifications(
    pg_url: str,
) -> None:
    """Creates notify after their commit, one notification of a process in flight at a
    time: a burst of 30 wakes listeners, with fewer notifications than tasks."""
    wakes = Wakes()
    store = await open_store(pg_url)
    try:
        async with listening(pg_url, wakes):
            before = wakes.count  # the listener's catch-up wake
            await asyncio.gather(*(store.insert_task(make_task()) for _ in range(30)))
            await wakes.next()
            # The wake-ups still due arrive within a few round trips.
            with contextlib.suppress(TimeoutError):
                while True:
                    await wakes.next(timeout=0.5)
            assert 1 <= wakes.count - before < 30
            claimed = await store.claim(worker_id="w", limit=50, lease_seconds=5)
            assert len(claimed) == 30
    finally:
        await store.close()


async def test_the_listener_reconnects_after_its_connection_is_killed(
    pg_url: str, store: Store
) -> None:
    wakes = Wakes()
    async with listening(pg_url, wakes) as wakeups:
        first_pid = wakeups.backend_pid
        assert await terminate_listeners(pg_url) == 1
        # Reconnecting wakes the worker once, in case something was queued meanwhile.
        await wakes.next(timeout=5)
        assert wakeups.connections == 2 and wakeups.backend_pid not in (None, first_pid)
        await store.insert_task(make_task())
        await wakes.next()


def _settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": url,
        "engine": "imageforge.testing.engines:ChaosEngine",
        "poll_interval_seconds": POLL_SECONDS,
        "worker_concurrency": 4,
        "lease_seconds": 10.0,
        "heartbeat_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


async def _dispatch_latencies(store: Store, count: int) -> list[float]:
    """Insert tasks one at a time (as another node would) and measure create → claim."""
    latencies = []
    for _ in range(count):
        task = make_task()
        await store.insert_task(task)
        deadline = time.monotonic() + POLL_SECONDS * 3
        while True:
            stored = await store.get_task(task.id)
            assert stored is not None
            if stored.started_at is not None:
                latencies.append(stored.started_at - task.created_at)
                break
            assert time.monotonic() < deadline, "task not picked up"
            await asyncio.sleep(0.005)
    return latencies


async def test_a_lost_notification_costs_at_most_a_poll(
    pg_url: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEFORGE_CHAOS_MAX_SECONDS", "0")
    runtime = await Runtime.start(_settings(tmp_path, pg_url), run_api=False, run_worker=True)
    try:
        await asyncio.sleep(0.5)  # the listener connects
        woken = await _dispatch_latencies(store, 10)
        # With wake-ups, an idle worker starts far sooner than its 1 s poll.
        assert statistics.median(woken) < 0.1, woken

        # The listener's connection dies: notifications are lost until it reconnects,
        # and the poll still finds the work within one interval.
        assert await terminate_listeners(pg_url) == 1
        lost = await _dispatch_latencies(store, 1)
        assert lost[0] <= POLL_SECONDS + 0.25, lost

        # It reconnects by itself and wake-ups are fast again.
        await asyncio.sleep(1.0)
        admin = await pg_connect(pg_url)
        try:
            listeners = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                " AND datname = current_database()",
                APPLICATION_NAME,
            )
        finally:
            await admin.close()
        assert listeners == 1
        again = await _dispatch_latencies(store, 5)
        assert statistics.median(again) < 0.1, again
    finally:
        await runtime.stop()


async def test_task_changes_reach_other_nodes_after_their_commits(pg_url: str) -> None:
    """Every transition of one store reaches another store's change listener with the
    task.s id, announced after the commit."""
    from imageforge.store.postgres import PostgresStore

    writer = await open_store(pg_url)
    reader = await open_store(pg_url)
    assert isinstance(reader, PostgresStore)
    seen: list[str | None] = []
    arrived = asyncio.Event()

    def changed(task_id: str | None) -> None:
        seen.append(task_id)
        arrived.set()

    listener = asyncio.create_task(reader.listen_for_task_changes(changed))
    try:
        await asyncio.wait_for(arrived.wait(), 5)  # the catch-up call after connecting
        assert seen == [None]
        tasks = [make_task() for _ in range(120)]
        for task in tasks:
            await writer.insert_task(task)
        claimed = await writer.claim(worker_id="w", limit=200, lease_seconds=30)
        assert len(claimed) == 120
        await asyncio.gather(
            *(
                writer.complete(
                    task.id,
                    task.attempt,
                    image_key=f"k/{task.id}.png",
                    content_type="image/png",
                    usage=None,
                )
                for task in claimed
            )
        )
        ids = {task.id for task in tasks}
        deadline = time.monotonic() + 10
        while seen.count(None) == 1 and time.monotonic() < deadline:
            if all(seen.count(task_id) >= 2 for task_id in ids):  # claimed, then completed
                break
            await asyncio.sleep(0.05)
        assert all(seen.count(task_id) >= 2 for task_id in ids)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await writer.close()
        await reader.close()
