"""The store's part of retention and of the janitor's lease, on both drivers (the store
contract's fixtures: SQLite and PostgreSQL, on a clock the test moves)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from imageforge.ids import KeyId
from imageforge.store import Store, open_store
from imageforge.tasks import Task, TaskStatus
from imageforge.testing.postgres import run_sync
from tests.ledger import ledger_entries
from tests.test_store_contract import (  # noqa: F401  (fixtures)
    Clock,
    claim_one,
    clock,
    database_url,
    make_task,
    store,
)

HOUR = 3600.0
T = TypeVar("T")


async def on_another_node(
    database_url: str,  # noqa: F811
    clock: Clock,  # noqa: F811
    work: Callable[[Store], Awaitable[T]],
) -> T:
    """Run `work` on a store of its own, on an event loop of its own in another thread:
    as another process would (two SQLite stores must not share one loop: each one's
    writer would wait on the other's commit with the loop blocked)."""

    async def node() -> T:
        opened = await open_store(database_url, clock=clock)
        try:
            return await work(opened)
        finally:
            await opened.close()

    return await asyncio.to_thread(run_sync, node)


async def test_one_holder_gets_a_sweep_lease_until_it_runs_out(
    store: Store,  # noqa: F811
    database_url: str,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    def take(holder: str, name: str = "janitor") -> Callable[[Store], Awaitable[bool]]:
        return lambda node: node.take_sweep_lease(name, holder=holder, lease_seconds=60)

    assert await store.take_sweep_lease("janitor", holder="a", lease_seconds=60)
    assert not await on_another_node(database_url, clock, take("b"))
    assert not await store.take_sweep_lease("janitor", holder="a", lease_seconds=60)
    # Other sweeps have leases of their own.
    assert await on_another_node(database_url, clock, take("b", "other"))
    clock.advance(61)
    assert await on_another_node(database_url, clock, take("b"))
    assert not await store.take_sweep_lease("janitor", holder="a", lease_seconds=60)


async def test_of_many_nodes_asking_at_once_one_gets_the_lease(
    store: Store,  # noqa: F811
    database_url: str,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    async def ask(node: Store, name: str) -> int:
        answers = await asyncio.gather(
            *(
                node.take_sweep_lease("janitor", holder=f"{name}-{n}", lease_seconds=60)
                for n in range(10)
            )
        )
        return sum(answers)

    here, there = await asyncio.gather(
        ask(store, "here"), on_another_node(database_url, clock, lambda node: ask(node, "there"))
    )
    assert here + there == 1


async def _complete(store: Store, task: Task) -> Task:  # noqa: F811
    await store.insert_task(task)
    claimed = await claim_one(store)
    key = f"2026/11/25/{claimed.id}-{claimed.attempt}.png"
    assert await store.complete(
        claimed.id, claimed.attempt, image_key=key, content_type="image/png", usage=None
    )
    done = await store.get_task(claimed.id)
    assert done is not None
    return done


async def _fail(store: Store, task: Task) -> Task:  # noqa: F811
    await store.insert_task(task)
    claimed = await claim_one(store)
    assert await store.fail(claimed.id, claimed.attempt, error="no", error_code="x")
    failed = await store.get_task(claimed.id)
    assert failed is not None
    return failed


async def test_retention_finds_forgets_and_deletes_exactly_what_is_past_it(
    store: Store,  # noqa: F811
    database_url: str,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    key = KeyId("key_retention")
    await store.create_key(
        key_id=key, name="r", key_hash="h" * 64, hint="h", now=clock(), balance_micros=1_000_000
    )
    old_done = await _complete(store, make_task(key, price_micros=6_000, now=clock()))
    old_failed = await _fail(store, make_task(key, price_micros=6_000, now=clock()))
    usage_before = await store.usage(key, since=0)
    clock.advance(2 * HOUR)
    new_done = await _complete(store, make_task(key, now=clock()))
    new_failed = await _fail(store, make_task(key, now=clock()))
    queued = make_task(key, now=clock() - 3 * HOUR)  # old, but not finished
    await store.insert_task(queued)
    cutoff = clock() - HOUR
    assert old_done.image_key is not None and old_done.finished_at is not None
    assert old_done.finished_at < cutoff < (new_done.finished_at or 0)

    assert await store.images_past_retention(finished_before=cutoff, limit=10) == [
        (old_done.id, old_done.image_key)
    ]
    # A row that still names its image is never deleted; a failed one has none.
    assert await store.delete_finished_tasks(finished_before=cutoff, limit=10) == 1
    assert await store.get_task(old_failed.id) is None
    assert await store.get_task(old_done.id) == old_done

    # Forgetting applies only while the row names that image.
    assert await store.forget_images([(old_done.id, "2026/11/25/another.png")]) == 0
    assert await store.forget_images([(old_done.id, old_done.image_key)]) == 1
    assert await store.forget_images([(old_done.id, old_done.image_key)]) == 0
    forgotten = await store.get_task(old_done.id)
    assert forgotten is not None
    assert (forgotten.status, forgotten.image_key) == (TaskStatus.COMPLETED, None)
    assert await store.images_past_retention(finished_before=cutoff, limit=10) == []

    assert await store.delete_finished_tasks(finished_before=cutoff, limit=10) == 1
    assert await store.get_task(old_done.id) is None
    for kept in (new_done, new_failed, queued):
        assert await store.get_task(kept.id) is not None
    # The money is untouched: every ledger row stays, and so does the spend reported.
    kinds = {(e.task_id, e.kind) for e in await ledger_entries(database_url, key)}
    assert {(old_done.id, "charge"), (old_failed.id, "charge"), (old_failed.id, "refund")} <= kinds
    after = await store.usage(key, since=0)
    assert sum(r.spend_micros for r in after) == sum(r.spend_micros for r in usage_before) == 6_000
    assert sum(r.tasks for r in after) == 3  # the rows left


async def test_retention_steps_take_at_most_their_limit_oldest_first(
    store: Store,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    done = []
    for _ in range(5):
        done.append(await _complete(store, make_task(now=clock())))
        clock.advance(1)
    cutoff = clock()
    found = await store.images_past_retention(finished_before=cutoff, limit=3)
    assert found == [(task.id, task.image_key) for task in done[:3]]
    assert await store.forget_images(found) == 3
    assert await store.delete_finished_tasks(finished_before=cutoff, limit=2) == 2
    assert await store.delete_finished_tasks(finished_before=cutoff, limit=2) == 1
    assert await store.delete_finished_tasks(finished_before=cutoff, limit=2) == 0
    assert [await store.get_task(t.id) is None for t in done] == [True] * 3 + [False] * 2
