"""One contract every store implementation must pass: claims, transitions, rescue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imageforge.ids import KeyId, TaskId, new_key_id, new_task_id
from imageforge.store import Store, open_store, upgrade_database
from imageforge.tasks import Task, TaskStatus


# PostgreSQL comes from tests/pg.py: one migrated database per session, emptied
# before each test (skipped with instructions when no server is reachable).
pytest_plugins = ["tests.pg"]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        await asyncio.to_thread(upgrade_database, url)
    opened = await open_store(url)
    try:
        yield opened
    finally:
        await opened.close()


def make_task(key_id: KeyId = KeyId("key_test"), **changes: Any) -> Task:
    now = changes.pop("now", time.time())
    task = Task(
        id=new_task_id(),
        key_id=key_id,
        model="gpt-image-2",
        engine="offline",
        prompt="a prompt",
        quality="low",
        width=1024,
        height=1024,
        ratio="1:1",
        resolution="1k",
        image_urls=("https://example.com/a.png",),
        status=TaskStatus.QUEUED,
        attempt=0,
        max_attempts=3,
        run_after=now,
        lease_expires_at=None,
        worker_id=None,
        image_key=None,
        content_type=None,
        error=None,
        error_code=None,
        usage=None,
        price_micros=0,
        upstream=None,
        upstream_task_id=None,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
    )
    return task.evolve(**changes)


async def claim_one(store: Store, now: float | None = None, lease: float = 30.0) -> Task:
    claimed = await store.claim(
        worker_id="w1", limit=1, lease_seconds=lease, now=now or time.time()
    )
    assert len(claimed) == 1
    return claimed[0]


async def test_insert_and_get_round_trip(store: Store) -> None:
    task = make_task()
    await store.insert_task(task)
    assert await store.get_task(task.id) == task
    assert await store.get_task(TaskId("image_missing")) is None


async def test_claim_takes_oldest_first_and_bumps_attempt(store: Store) -> None:
    now = time.time()
    first = make_task(now=now - 2)
    second = make_task(now=now - 1)
    await store.insert_task(second)
    await store.insert_task(first)
    claimed = await store.claim(worker_id="w1", limit=1, lease_seconds=30, now=now)
    assert [t.id for t in claimed] == [first.id]
    task = claimed[0]
    assert task.status is TaskStatus.PROCESSING
    assert task.attempt == 1
    assert task.worker_id == "w1"
    assert task.lease_expires_at == pytest.approx(now + 30)
    assert task.started_at == pytest.approx(now)


async def test_claim_respects_limit_and_run_after(store: Store) -> None:
    now = time.time()
    for _ in range(3):
        await store.insert_task(make_task(now=now))
    later = make_task(now=now, run_after=now + 60)
    await store.insert_task(later)
    claimed = await store.claim(worker_id="w1", limit=2, lease_seconds=30, now=now)
    assert len(claimed) == 2
    claimed = await store.claim(worker_id="w1", limit=10, lease_seconds=30, now=now)
    assert len(claimed) == 1
    assert await store.claim(worker_id="w1", limit=10, lease_seconds=30, now=now) == []
    claimed = await store.claim(worker_id="w1", limit=10, lease_seconds=30, now=now + 61)
    assert [t.id for t in claimed] == [later.id]


async def test_a_task_is_never_claimed_twice(store: Store) -> None:
    await store.insert_task(make_task())
    await claim_one(store)
    assert await store.claim(worker_id="w2", limit=5, lease_seconds=30, now=time.time()) == []


async def test_complete_applies_only_for_the_current_attempt(store: Store) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store)
    now = time.time()
    stale = await store.complete(
        task.id, task.attempt - 1, image_key="k", content_type="image/png", usage=None, now=now
    )
    assert stale is False
    done = await store.complete(
        task.id, task.attempt, image_key="k", content_type="image/png", usage={"t": 1}, now=now
    )
    assert done is True
    stored = await store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED
    assert stored.image_key == "k" and stored.usage == {"t": 1}
    assert stored.finished_at == pytest.approx(now)
    # Terminal: nothing moves it again.
    assert not await store.fail(task.id, task.attempt, error="x", error_code="x", now=now)
    assert not await store.requeue(
        task.id, task.attempt, run_after=now, error="x", error_code="x", now=now
    )
    assert not await store.heartbeat(task.id, task.attempt, lease_until=now + 10)
    assert not await store.release(task.id, task.attempt, now=now)


async def test_fail_records_the_error(store: Store) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store)
    assert await store.fail(task.id, task.attempt, error="bad", error_code="engine", now=1.0)
    stored = await store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.error, stored.error_code) == (TaskStatus.FAILED, "bad", "engine")
    assert not await store.complete(
        task.id, task.attempt, image_key="k", content_type="image/png", usage=None, now=2.0
    )


async def test_requeue_then_reclaim_uses_a_new_attempt(store: Store) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store)
    now = time.time()
    assert await store.requeue(
        task.id, task.attempt, run_after=now + 5, error="busy", error_code="upstream", now=now
    )
    queued = await store.get_task(task.id)
    assert queued is not None and queued.status is TaskStatus.QUEUED and queued.error == "busy"
    assert await store.claim(worker_id="w1", limit=1, lease_seconds=30, now=now) == []
    again = await claim_one(store, now=now + 6)
    assert again.attempt == 2
    # The first attempt's writes no longer apply.
    assert not await store.heartbeat(task.id, 1, lease_until=now + 100)
    assert not await store.complete(
        task.id, 1, image_key="k", content_type="image/png", usage=None, now=now
    )


async def test_heartbeat_extends_the_lease(store: Store) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store, lease=1)
    assert await store.heartbeat(task.id, task.attempt, lease_until=time.time() + 100)
    report = await store.rescue_expired(now=time.time() + 10)
    assert report.requeued == () and report.failed == ()


async def test_rescue_requeues_expired_then_fails_after_the_last_attempt(store: Store) -> None:
    await store.insert_task(make_task(max_attempts=2))
    now = time.time()
    task = await claim_one(store, now=now, lease=1)
    report = await store.rescue_expired(now=now + 2)
    assert report.requeued == (task.id,) and report.failed == ()
    task = await claim_one(store, now=now + 3, lease=1)
    assert task.attempt == 2
    report = await store.rescue_expired(now=now + 5)
    assert report.requeued == () and report.failed == (task.id,)
    stored = await store.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.FAILED
    assert stored.error is not None and "2 attempts" in stored.error


async def test_rescue_leaves_live_leases_alone(store: Store) -> None:
    await store.insert_task(make_task())
    now = time.time()
    await claim_one(store, now=now, lease=30)
    report = await store.rescue_expired(now=now + 1)
    assert report == type(report)(requeued=(), failed=())


async def test_release_hands_back_without_spending_the_attempt(store: Store) -> None:
    await store.insert_task(make_task(max_attempts=1))
    task = await claim_one(store)
    assert await store.release(task.id, task.attempt, now=time.time())
    again = await claim_one(store)
    assert again.attempt == 2 and again.max_attempts == 2


async def test_keys_create_find_revoke_and_fingerprint(store: Store) -> None:
    assert await store.keys_fingerprint() == (0, 0)
    key_id = new_key_id()
    record = await store.create_key(
        key_id=key_id, name="ci", key_hash="ab" * 32, hint="ifk_ab…cdef", now=1.0
    )
    assert record.is_active
    assert await store.find_key("ab" * 32) == record
    assert await store.find_key("cd" * 32) is None
    assert await store.keys_fingerprint() == (1, 0)
    assert await store.revoke_key(key_id, now=2.0)
    assert not await store.revoke_key(key_id, now=3.0)
    revoked = await store.find_key("ab" * 32)
    assert revoked is not None and not revoked.is_active and revoked.revoked_at == 2.0
    assert await store.keys_fingerprint() == (1, 1)
    assert [k.id for k in await store.list_keys()] == [key_id]


async def test_counts_by_status(store: Store) -> None:
    for _ in range(2):
        await store.insert_task(make_task())
    await claim_one(store)
    assert await store.count_tasks_by_status() == {"queued": 1, "processing": 1}


async def test_record_upstream_is_fenced_and_survives_a_rescue(store: Store) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store, lease=1)
    now = time.time()
    assert not await store.record_upstream(
        task.id, task.attempt + 1, upstream="relay-a", upstream_task_id="up_1", now=now
    )
    assert await store.record_upstream(
        task.id, task.attempt, upstream="relay-a", upstream_task_id="up_1", now=now
    )
    await store.rescue_expired(now=now + 5)
    again = await claim_one(store, now=now + 6)
    assert (again.upstream, again.upstream_task_id) == ("relay-a", "up_1")
    assert await store.complete(
        again.id,
        again.attempt,
        image_key="k",
        content_type="image/png",
        usage=None,
        upstream="relay-a",
        now=now + 7,
    )
