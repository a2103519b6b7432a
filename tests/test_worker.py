"""The worker's rules: retries, backoff, giving up, leases, hand-back on stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imageforge.engines import GeneratedImage, GenerationRequest
from imageforge.observability.metrics import Metrics, metrics
from imageforge.references import ReferenceFetcher
from imageforge.storage import LocalStorage, UrlSigner
from imageforge.store import Store, open_store, upgrade_database
from imageforge.tasks import Task, TaskStatus
from imageforge.testing.engines import PNG_1X1, ScriptedEngine, permanent, transient
from imageforge.worker.retry import retry_delay, retry_until_deadline
from imageforge.worker.runner import Runner, RunnerConfig
from tests.test_store_contract import make_task


@dataclass
class Rig:
    store: Store
    storage: LocalStorage
    engine: ScriptedEngine

    def runner(self, metrics: Metrics | None = None, **config: float) -> Runner:
        values: dict[str, float] = {
            "concurrency": 4,
            "lease_seconds": 5.0,
            "heartbeat_seconds": 1.0,
            "poll_interval_seconds": 0.05,
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.1,
            "shutdown_grace_seconds": 0.5,
        }
        values.update(config)
        return Runner(
            store=self.store,
            storage=self.storage,
            engines={"offline": self.engine},
            fetcher=ReferenceFetcher(),
            config=RunnerConfig(**values),  # type: ignore[arg-type]
            metrics=metrics,
        )

    async def add(self, **changes: object) -> Task:
        task = make_task(image_urls=(), **changes)
        await self.store.insert_task(task)
        return task

    async def wait_for(self, task: Task, status: TaskStatus, timeout: float = 10.0) -> Task:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = await self.store.get_task(task.id)
            assert current is not None
            if current.status is status:
                return current
            await asyncio.sleep(0.02)
        raise AssertionError(f"{task.id} never reached {status}")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    await asyncio.to_thread(upgrade_database, url)
    store = await open_store(url)
    storage = LocalStorage(tmp_path / "images", UrlSigner(b"k" * 32))
    try:
        yield Rig(store, storage, ScriptedEngine())
    finally:
        await store.close()


async def run_until(runner: Runner, condition: Callable[[], object]) -> None:
    job = asyncio.create_task(runner.run())
    try:
        await condition()  # type: ignore[misc]
    finally:
        await runner.stop()
        await job


async def test_success_stores_the_image_and_completes(rig: Rig) -> None:
    task = await rig.add()
    runner = rig.runner()

    async def done() -> None:
        completed = await rig.wait_for(task, TaskStatus.COMPLETED)
        assert completed.image_key is not None
        path = rig.storage.path_for(completed.image_key)
        assert path is not None and path.read_bytes() == PNG_1X1

    await run_until(runner, done)
    assert rig.engine.calls[0].prompt == task.prompt
    assert (rig.engine.calls[0].width, rig.engine.calls[0].height) == (1024, 1024)


async def test_retryable_errors_are_retried_then_succeed(rig: Rig) -> None:
    rig.engine.script = [transient, transient]
    task = await rig.add(max_attempts=3)

    async def done() -> None:
        completed = await rig.wait_for(task, TaskStatus.COMPLETED)
        assert completed.attempt == 3

    await run_until(rig.runner(), done)
    assert len(rig.engine.calls) == 3


async def test_retryable_errors_give_up_after_max_attempts(rig: Rig) -> None:
    rig.engine.script = [transient] * 5
    task = await rig.add(max_attempts=3)

    async def done() -> None:
        failed = await rig.wait_for(task, TaskStatus.FAILED)
        assert failed.attempt == 3
        assert failed.error == "generation failed after 3 attempts: upstream busy"

    await run_until(rig.runner(), done)
    assert len(rig.engine.calls) == 3


async def test_permanent_errors_fail_at_once(rig: Rig) -> None:
    rig.engine.script = [permanent]
    task = await rig.add(max_attempts=3)

    async def done() -> None:
        failed = await rig.wait_for(task, TaskStatus.FAILED)
        assert failed.attempt == 1
        assert failed.error == "prompt rejected by policy"

    await run_until(rig.runner(), done)


async def test_a_worker_that_lost_its_lease_changes_nothing(rig: Rig) -> None:
    rig.engine.delay = 0.6
    task = await rig.add()
    runner = rig.runner(heartbeat_seconds=5.0, lease_seconds=10.0)

    async def steal_then_check() -> None:
        claimed = await rig.wait_for(task, TaskStatus.PROCESSING)
        # Another party takes the task over: re-queue it and claim it as attempt 2.
        assert await rig.store.requeue(
            task.id, claimed.attempt, delay_seconds=60, error="x", error_code="x"
        )
        await asyncio.sleep(1.0)  # the first worker finishes generating meanwhile
        current = await rig.store.get_task(task.id)
        assert current is not None
        assert current.status is TaskStatus.QUEUED and current.image_key is None
        assert list(rig.storage.root.rglob("*.png")) == []

    await run_until(runner, steal_then_check)


async def test_heartbeat_notices_a_lost_lease_and_abandons_the_work(rig: Rig) -> None:
    rig.engine.delay = 3.0
    task = await rig.add()
    runner = rig.runner(heartbeat_seconds=0.2, lease_seconds=5.0)

    async def steal() -> None:
        claimed = await rig.wait_for(task, TaskStatus.PROCESSING)
        await rig.store.requeue(
            task.id, claimed.attempt, delay_seconds=60, error="x", error_code="x"
        )
        await asyncio.sleep(0.6)
        assert runner.in_flight == 0

    await run_until(runner, steal)


async def test_stop_hands_unfinished_tasks_back(rig: Rig) -> None:
    rig.engine.delay = 5.0
    task = await rig.add(max_attempts=1)
    runner = rig.runner(shutdown_grace_seconds=0.2)

    async def started() -> None:
        await rig.wait_for(task, TaskStatus.PROCESSING)

    await run_until(runner, started)
    current = await rig.store.get_task(task.id)
    assert current is not None
    assert current.status is TaskStatus.QUEUED
    assert current.max_attempts == 2  # the hand-back did not spend the only attempt


async def test_concurrency_limit_is_respected(rig: Rig) -> None:
    rig.engine.delay = 0.3
    tasks = [await rig.add() for _ in range(6)]
    runner = rig.runner(concurrency=2)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            peak = max(peak, runner.in_flight)
            counts = await rig.store.count_tasks_by_status()
            if counts.get("completed") == len(tasks):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("tasks did not complete")

    await run_until(runner, watch)
    assert peak == 2


def test_retry_delay_grows_exponentially_within_bounds() -> None:
    import random

    rng = random.Random(7)
    for attempt, cap in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 60.0), (20, 60.0)]:
        for _ in range(50):
            delay = retry_delay(attempt, base_seconds=2.0, max_seconds=60.0, rng=rng)
            assert cap / 2 <= delay <= cap
    assert retry_delay(1, base_seconds=2.0, max_seconds=60.0, retry_after=30.0) == 30.0
    assert retry_delay(1, base_seconds=2.0, max_seconds=60.0, retry_after=600.0) == 60.0


class HeldStorage(LocalStorage):
    """Local storage whose writes wait until the test lets them through."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, UrlSigner(b"k" * 32))
        self.gate = asyncio.Event()
        self.waiting = 0

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.waiting += 1
        await self.gate.wait()
        await super().put(key, data, content_type)


async def test_a_generated_task_frees_its_slot_while_it_is_stored(rig: Rig, tmp_path: Path) -> None:
    """Storage being slow must not idle the engine: the next tasks are generated while
    the first ones are stored, up to `concurrency` tasks finishing at once."""
    storage = HeldStorage(tmp_path / "held")
    rig.storage = storage
    tasks = [await rig.add() for _ in range(6)]
    runner = rig.runner(concurrency=2)

    async def scenario() -> None:
        deadline = time.monotonic() + 10
        # 2 finishing (holding 2 finishing slots) + 2 generated and waiting for one.
        while len(rig.engine.calls) < 4 or storage.waiting < 2:
            assert time.monotonic() < deadline, "the engine sat idle while images were stored"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert len(rig.engine.calls) == 4, "more than 2 tasks finishing at once"
        assert storage.waiting == 2
        storage.gate.set()
        for task in tasks:
            await rig.wait_for(task, TaskStatus.COMPLETED)

    await run_until(runner, scenario)
    assert len(rig.engine.calls) == 6


async def test_one_write_renews_every_lease_the_runner_holds(rig: Rig) -> None:
    rig.engine.delay = 1.0
    tasks = [await rig.add() for _ in range(10)]
    runner = rig.runner(concurrency=10, heartbeat_seconds=0.2, lease_seconds=5.0)
    batches: list[int] = []
    keep = rig.store.keep_leases

    async def counting(leases: Any, *, lease_seconds: float) -> Any:
        batches.append(len(leases))
        return await keep(leases, lease_seconds=lease_seconds)

    rig.store.keep_leases = counting  # type: ignore[method-assign]

    async def scenario() -> None:
        for task in tasks:
            await rig.wait_for(task, TaskStatus.COMPLETED)

    await run_until(runner, scenario)
    assert batches and max(batches) == 10
    assert len(batches) <= 7  # one write per beat, not one per task


async def test_claims_go_first_but_never_hold_a_finished_image_back_for_long(rig: Rig) -> None:
    """While the run loop keeps claiming (a backlog, slow claims of one task each, room to
    spare), generated tasks wait for it before they are stored, but never longer than
    FINISHING_MAX_DEFER_SECONDS: the claiming here goes on for about 4 s."""
    from imageforge.worker.slots import FINISHING_MAX_DEFER_SECONDS

    tasks = [await rig.add() for _ in range(40)]
    generated_at: dict[str, float] = {}
    generate = rig.engine.generate

    delays = iter([0.01 * (i % 10) for i in range(len(tasks) * 2)])

    async def recording(request: GenerationRequest) -> GeneratedImage:
        await asyncio.sleep(next(delays))  # staggered, so some finish mid-claim
        image = await generate(request)
        generated_at[request.task_id] = time.time()
        return image

    rig.engine.generate = recording  # type: ignore[method-assign]
    claim = rig.store.claim

    async def slow_claim(**kwargs: Any) -> Any:
        await asyncio.sleep(0.1)
        return await claim(**{**kwargs, "limit": 1})

    rig.store.claim = slow_claim  # type: ignore[method-assign]
    runner = rig.runner(concurrency=100)

    async def scenario() -> None:
        for task in tasks:
            await rig.wait_for(task, TaskStatus.COMPLETED, timeout=30)

    await run_until(runner, scenario)
    waits = []
    for task in tasks:
        done = await rig.store.get_task(task.id)
        assert done is not None and done.finished_at is not None
        waits.append(done.finished_at - generated_at[task.id])
    assert max(waits) > 0.03, "no task ever waited for a claim: the test proves nothing"
    assert max(waits) < min(FINISHING_MAX_DEFER_SECONDS, 1.0) + 0.3, max(waits)


async def test_a_write_is_retried_through_an_outage_until_its_deadline() -> None:
    class Down(Exception):
        pass

    now = [0.0]
    calls: list[float] = []
    slept: list[float] = []

    async def flaky(fails: int) -> str:
        calls.append(now[0])
        if len(calls) <= fails:
            raise Down()
        return "done"

    def advance(delay: float) -> None:
        slept.append(delay)
        now[0] += delay

    def retrying(fails: int, within: float, **options: Any) -> Any:
        calls.clear()
        return retry_until_deadline(
            lambda: flaky(fails),
            retry_on=Down,
            within_seconds=within,
            on_retry=advance,
            clock=lambda: now[0],
            first_delay=0.001,
            max_delay=0.004,
            **options,
        )

    assert await retrying(3, within=5.0) == ("done", 3)
    assert slept == [0.001, 0.002, 0.004]
    with pytest.raises(Down):  # the next try would start after the deadline
        await retrying(100, within=0.01)
    assert len(calls) == 4  # at 0, +1, +3, +7 ms; +11 would be past 10
    with pytest.raises(Down):  # told to stop trying (the worker is shutting down)
        await retrying(100, within=60.0, keep_trying=lambda: False)
    assert len(calls) == 1


def test_the_documented_defaults_are_the_code_defaults() -> None:
    from imageforge.settings import Settings
    from imageforge.store.urls import DEFAULT_POOL_SIZE
    from imageforge.worker.runner import CLAIM_BATCH

    fields = Settings.model_fields
    assert fields["claim_batch"].default == CLAIM_BATCH
    assert fields["postgres_pool_size"].default == DEFAULT_POOL_SIZE


async def test_the_worker_counts_retries_failures_and_engine_time(rig: Rig) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    task_labels = {"model": "gpt-image-2", "engine": "offline"}
    coded = {**task_labels, "code": "engine_error"}
    before = {
        "retries": sample("imageforge_task_retries_total", **coded),
        "failed": sample("imageforge_tasks_failed_total", **coded),
        "errors": sample("imageforge_engine_seconds_count", **task_labels, outcome="error"),
        "queued": sample("imageforge_task_queue_seconds_count", **task_labels),
    }
    rig.engine.script = [transient, permanent]
    task = await rig.add(max_attempts=3)
    runner = rig.runner(metrics=metrics())

    async def done() -> None:
        await rig.wait_for(task, TaskStatus.FAILED)

    await run_until(runner, done)
    assert sample("imageforge_task_retries_total", **coded) - before["retries"] == 1
    assert sample("imageforge_tasks_failed_total", **coded) - before["failed"] == 1
    errors = sample("imageforge_engine_seconds_count", **task_labels, outcome="error")
    assert errors - before["errors"] == 2
    assert sample("imageforge_task_queue_seconds_count", **task_labels) - before["queued"] == 2


async def test_a_task_cancelled_during_an_earlier_attempt_never_runs_again(rig: Rig) -> None:
    """The cancel came while attempt 1 ran, which then ended retryable: the next claim
    fails it as cancelled instead of generating."""
    task = await rig.add()
    (claimed,) = await rig.store.claim(worker_id="w0", limit=1, lease_seconds=5)
    await rig.store.cancel_task(task.id)
    await rig.store.requeue(
        task.id, claimed.attempt, delay_seconds=0, error="busy", error_code="busy"
    )
    runner = rig.runner()

    async def scenario() -> None:
        failed = await rig.wait_for(task, TaskStatus.FAILED)
        assert failed.error is not None and failed.error.startswith("cancelled")

    await run_until(runner, scenario)
    assert rig.engine.calls == []
