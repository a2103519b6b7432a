"""Leases and schedules run on the database's clock: a worker whose own clock is off
by a minute neither steals live tasks nor starves.

Each worker here is a runner and a rescuer with a store of its own, given a clock
that is a minute ahead of or behind true time (the machine's clock is not touched).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from imageforge.engines import GeneratedImage, GenerationRequest
from imageforge.references import ReferenceFetcher
from imageforge.storage import LocalStorage, UrlSigner
from imageforge.store import Store, open_store
from imageforge.worker.rescuer import rescue_forever
from imageforge.worker.runner import Runner, RunnerConfig
from tests.test_store_contract import make_task
from tests.test_worker import PNG_1X1

pytest_plugins = ["tests.pg"]

TASKS = 24
SKEW_SECONDS = 60.0


@dataclass
class CountingEngine:
    """Takes a while per image and counts which tasks it was asked to generate."""

    name: ClassVar[str] = "counting"
    fetches_references: ClassVar[bool] = True
    delay: float = 0.4
    generated: Counter[str] = field(default_factory=Counter)

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.generated[request.task_id] += 1
        await asyncio.sleep(self.delay)
        return GeneratedImage(data=PNG_1X1, content_type="image/png", width=1, height=1)

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def worker(
    url: str, images: Path, engine: CountingEngine, clock: Callable[[], float]
) -> AsyncIterator[None]:
    """A runner and its rescuer, as `imageforge worker` runs them, on `clock`."""
    store = await open_store(url)
    runner = Runner(
        store=store,
        storage=LocalStorage(images, UrlSigner(b"k" * 32)),
        engines={"offline": engine},
        fetcher=ReferenceFetcher(),
        config=RunnerConfig(
            concurrency=4,
            lease_seconds=3.0,
            heartbeat_seconds=1.0,
            poll_interval_seconds=0.1,
            retry_base_seconds=0.05,
            retry_max_seconds=0.1,
            shutdown_grace_seconds=1.0,
        ),
        clock=clock,
    )
    running = asyncio.create_task(runner.run())
    rescuing = asyncio.create_task(rescue_forever(store, interval_seconds=0.2, clock=clock))
    try:
        yield
    finally:
        rescuing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rescuing
        await runner.stop()
        await running
        await store.close()


async def _wait_all_completed(store: Store, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await store.count_tasks_by_status()).get("completed", 0) < TASKS:
        assert time.monotonic() < deadline, await store.count_tasks_by_status()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("skew", [SKEW_SECONDS, -SKEW_SECONDS], ids=["ahead", "behind"])
async def test_a_worker_with_a_skewed_clock_neither_steals_nor_starves(
    pg_url: str, tmp_path: Path, skew: float
) -> None:
    store = await open_store(pg_url)
    try:
        ids = []
        for _ in range(TASKS):
            task = make_task(image_urls=())
            await store.insert_task(task)
            ids.append(task.id)
        true, skewed = CountingEngine(), CountingEngine()
        async with (
            worker(pg_url, tmp_path / "images", true, time.time),
            worker(pg_url, tmp_path / "images", skewed, lambda: time.time() + skew),
        ):
            await _wait_all_completed(store, timeout=60)
        attempts = [task.attempt for task in [await store.get_task(i) for i in ids] if task]
    finally:
        await store.close()
    generated = true.generated + skewed.generated
    twice = sorted(task_id for task_id, count in generated.items() if count > 1)
    print(
        f"skew {skew:+.0f} s: {len(twice)} of {TASKS} tasks claimed twice; "
        f"the skewed worker generated {sum(skewed.generated.values())}, "
        f"the true one {sum(true.generated.values())}"
    )
    assert twice == [] and attempts == [1] * TASKS, f"{len(twice)} of {TASKS} claimed twice"
    # Both workers had room for 4 of the 24 from the start: each took its share.
    assert sum(skewed.generated.values()) >= 4
    assert sum(true.generated.values()) >= 4
