"""One contract every store implementation must pass: claims, transitions, rescue.

Each store runs on a `Clock` the test moves: true time plus whatever the test skipped
ahead. (Without one, PostgreSQL times leases on the server's clock, SQLite on the
machine's; tests/test_postgres_clocks.py covers that.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imageforge.billing import InsufficientCredits
from imageforge.errors import IdempotencyConflict, NotFound, RateLimited
from imageforge.ids import KeyId, TaskId, new_key_id, new_task_id
from imageforge.store import RescueReport, Store, open_store, upgrade_database
from imageforge.store.base import AuditEntry, IdempotencyClaim, StoreConflict
from imageforge.tasks import Task, TaskStatus
from tests.ledger import ledger_entries, ledger_sum

# PostgreSQL comes from tests/pg.py: one migrated database per session, emptied
# before each test (skipped with instructions when no server is reachable).


class Clock:
    """True time, plus whatever a test skips ahead: leases expire and retries come due
    without waiting for them."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped

    def advance(self, seconds: float) -> None:
        self.skipped += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await asyncio.to_thread(upgrade_database, url)
    return url


@pytest.fixture
async def store(database_url: str, clock: Clock) -> AsyncIterator[Store]:
    opened = await open_store(database_url, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


def make_task(key_id: KeyId = KeyId("key_test"), **changes: Any) -> Task:
    now = changes.pop("now", time.time())
    task = Task.queued(
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
        max_attempts=3,
        price_micros=0,
        now=now,
    )
    return task.evolve(**changes)


async def claim_one(store: Store, lease: float = 30.0) -> Task:
    claimed = await store.claim(worker_id="w1", limit=1, lease_seconds=lease)
    assert len(claimed) == 1
    return claimed[0]


async def test_insert_and_get_round_trip(store: Store) -> None:
    task = make_task()
    assert await store.insert_task(task) == (task, False)
    assert await store.get_task(task.id) == task
    assert await store.get_task(TaskId("image_missing")) is None


async def test_a_task_from_a_clock_ahead_is_claimable_at_once(store: Store, clock: Clock) -> None:
    """An API node whose clock runs a minute ahead: its task is due on the store's clock
    now, not in a minute; the task returned is the one stored."""
    task = make_task(now=clock() + 60)
    stored, _ = await store.insert_task(task)
    assert stored.run_after == pytest.approx(clock(), abs=5)
    assert stored == task.evolve(run_after=stored.run_after)
    assert await store.get_task(task.id) == stored
    assert (await claim_one(store)).id == task.id


async def test_claim_takes_oldest_first_and_bumps_attempt(store: Store, clock: Clock) -> None:
    now = clock()
    first = make_task(now=now - 2)
    second = make_task(now=now - 1)
    await store.insert_task(second)
    await store.insert_task(first)
    claimed = await store.claim(worker_id="w1", limit=1, lease_seconds=30)
    assert [t.id for t in claimed] == [first.id]
    task = claimed[0]
    assert task.status is TaskStatus.PROCESSING
    assert task.attempt == 1
    assert task.worker_id == "w1"
    assert task.lease_expires_at == pytest.approx(clock() + 30, abs=5)
    assert task.started_at == pytest.approx(clock(), abs=5)


async def test_claim_respects_limit_and_run_after(store: Store, clock: Clock) -> None:
    for _ in range(4):
        await store.insert_task(make_task())
    held, _ = await store.claim(worker_id="w1", limit=2, lease_seconds=30)
    assert await store.requeue(
        held.id, held.attempt, delay_seconds=60, error="busy", error_code="upstream"
    )
    claimed = await store.claim(worker_id="w1", limit=10, lease_seconds=30)
    assert len(claimed) == 2 and held.id not in {t.id for t in claimed}
    assert await store.claim(worker_id="w1", limit=10, lease_seconds=30) == []
    clock.advance(61)
    claimed = await store.claim(worker_id="w1", limit=10, lease_seconds=30)
    assert [t.id for t in claimed] == [held.id]


async def test_a_task_is_never_claimed_twice(store: Store) -> None:
    await store.insert_task(make_task())
    await claim_one(store)
    assert await store.claim(worker_id="w2", limit=5, lease_seconds=30) == []


async def test_complete_applies_only_for_the_current_attempt(store: Store, clock: Clock) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store)
    stale = await store.complete(
        task.id, task.attempt - 1, image_key="k", content_type="image/png", usage=None
    )
    assert stale is False
    done = await store.complete(
        task.id, task.attempt, image_key="k", content_type="image/png", usage={"t": 1}
    )
    assert done is True
    stored = await store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED
    assert stored.image_key == "k" and stored.usage == {"t": 1}
    assert stored.finished_at == pytest.approx(clock(), abs=5)
    # Terminal: nothing moves it again.
    assert not await store.fail(task.id, task.attempt, error="x", error_code="x")
    assert not await store.requeue(
        task.id, task.attempt, delay_seconds=0, error="x", error_code="x"
    )
    assert not await store.renew_leases([(task.id, task.attempt)], lease_seconds=10)
    assert not await store.release(task.id, task.attempt)


async def test_fail_records_the_error(store: Store) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store)
    assert await store.fail(task.id, task.attempt, error="bad", error_code="engine")
    stored = await store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.error, stored.error_code) == (TaskStatus.FAILED, "bad", "engine")
    assert not await store.complete(
        task.id, task.attempt, image_key="k", content_type="image/png", usage=None
    )


async def test_requeue_then_reclaim_uses_a_new_attempt(store: Store, clock: Clock) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store)
    assert await store.requeue(
        task.id, task.attempt, delay_seconds=5, error="busy", error_code="upstream"
    )
    queued = await store.get_task(task.id)
    assert queued is not None and queued.status is TaskStatus.QUEUED and queued.error == "busy"
    assert queued.run_after == pytest.approx(clock() + 5, abs=2)
    assert await store.claim(worker_id="w1", limit=1, lease_seconds=30) == []
    clock.advance(6)
    again = await claim_one(store)
    assert again.attempt == 2
    # The first attempt's writes no longer apply.
    assert not await store.renew_leases([(task.id, 1)], lease_seconds=100)
    assert not await store.complete(task.id, 1, image_key="k", content_type="image/png", usage=None)


async def test_renewing_a_lease_keeps_the_rescuer_away(store: Store, clock: Clock) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store, lease=1)
    assert await store.renew_leases([(task.id, task.attempt)], lease_seconds=100)
    clock.advance(10)
    report = await store.rescue_expired()
    assert report.requeued == () and report.failed == ()


async def test_leases_are_renewed_together_and_only_where_still_ours(
    store: Store, clock: Clock
) -> None:
    for _ in range(4):
        await store.insert_task(make_task())
    ours, done, stale, other = await store.claim(worker_id="w1", limit=4, lease_seconds=1)
    assert await store.complete(
        done.id, done.attempt, image_key="k", content_type="image/png", usage=None
    )
    assert await store.requeue(stale.id, stale.attempt, delay_seconds=0, error="x", error_code="x")
    await store.claim(worker_id="w2", limit=1, lease_seconds=1)  # stale's attempt 2
    renewed = await store.renew_leases(
        [
            (ours.id, ours.attempt),
            (done.id, done.attempt),
            (stale.id, stale.attempt),
            (TaskId("image_nosuchtask"), 1),
        ],
        lease_seconds=100,
    )
    assert renewed == {ours.id}
    # Only the renewed lease outlives the others; `other` was not in the list.
    clock.advance(10)
    report = await store.rescue_expired()
    assert set(report.requeued) == {stale.id, other.id}
    assert await store.renew_leases([], lease_seconds=100) == set()


async def test_rescue_requeues_expired_then_fails_after_the_last_attempt(
    store: Store, clock: Clock
) -> None:
    await store.insert_task(make_task(max_attempts=2))
    task = await claim_one(store, lease=1)
    clock.advance(2)
    report = await store.rescue_expired()
    assert report.requeued == (task.id,) and report.failed == ()
    task = await claim_one(store, lease=1)
    assert task.attempt == 2
    clock.advance(2)
    report = await store.rescue_expired()
    assert report.requeued == () and report.failed == (task.id,)
    stored = await store.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.FAILED
    assert stored.error is not None and "2 attempts" in stored.error


async def test_rescue_leaves_live_leases_alone(store: Store, clock: Clock) -> None:
    await store.insert_task(make_task())
    await claim_one(store, lease=30)
    clock.advance(1)
    report = await store.rescue_expired()
    assert report == type(report)(requeued=(), failed=())


async def test_release_hands_back_without_spending_the_attempt(store: Store) -> None:
    await store.insert_task(make_task(max_attempts=1))
    task = await claim_one(store)
    assert await store.release(task.id, task.attempt)
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


async def test_key_kinds_are_stored_as_created(store: Store) -> None:
    kinds = {(False, True), (True, False), (True, True)}
    for n, (admin, task_api) in enumerate(sorted(kinds)):
        created = await store.create_key(
            key_id=new_key_id(),
            name=f"k{n}",
            key_hash=f"{n:02d}" * 32,
            hint="ifk_…",
            now=float(n),
            admin=admin,
            task_api=task_api,
        )
        found = await store.find_key(f"{n:02d}" * 32)
        assert found == created and (found.admin, found.task_api) == (admin, task_api)
    assert {(k.admin, k.task_api) for k in await store.list_keys()} == kinds


async def test_the_audit_is_appended_and_read_newest_first(store: Store) -> None:
    assert await store.list_audit(limit=10) == []
    written = [
        await store.record_audit(
            AuditEntry(
                at=float(n),
                actor="key_ops",
                action="keys.credits",
                target=f"key_{n}",
                details={"add_micros": n * 1_000_000, "note": "ünïcode"},
                request_id=None if n else "req-1",
            )
        )
        for n in range(5)
    ]
    ids = [entry.id for entry in written]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
    newest = await store.list_audit(limit=3)
    assert newest == list(reversed(written))[:3]
    older = await store.list_audit(limit=10, before_id=newest[-1].id)
    assert older == list(reversed(written))[3:]
    assert older[-1].details == {"add_micros": 0, "note": "ünïcode"}
    assert older[-1].request_id == "req-1"


async def test_an_admin_write_and_its_audit_commit_together_or_not_at_all(store: Store) -> None:
    def entry(action: str, target: str, **details: object) -> AuditEntry:
        return AuditEntry(
            at=1.0, actor="cli", action=action, target=target, details=details, request_id=None
        )

    key_id = new_key_id()
    created = await store.create_key(
        key_id=key_id,
        name="audited",
        key_hash="cd" * 32,
        hint="ifk_…",
        now=1.0,
        balance_micros=5,
        audit=lambda record: entry("keys.create", record.id, name=record.name),
    )
    credited = await store.adjust_balance(
        key_id,
        add_micros=7,
        now=2.0,
        audit=lambda record: entry("keys.credits", record.id, balance=record.balance_micros),
    )
    assert credited.balance_micros == 12
    assert await store.revoke_key(key_id, now=3.0, audit=lambda _: entry("keys.revoke", key_id))
    # Revoked already: nothing changes, and the audit callback says there is nothing to record.
    assert not await store.revoke_key(
        key_id, now=4.0, audit=lambda revoked: entry("keys.revoke", key_id) if revoked else None
    )
    audit = await store.list_audit(limit=10)
    assert [(e.action, e.target, e.details) for e in reversed(audit)] == [
        ("keys.create", created.id, {"name": "audited"}),
        ("keys.credits", key_id, {"balance": 12}),
        ("keys.revoke", key_id, {}),
    ]

    # An entry that cannot be written (details that are not JSON) undoes its write.
    unwritable = {"details": object()}
    other = new_key_id()
    with pytest.raises(TypeError):
        await store.create_key(
            key_id=other,
            name="never",
            key_hash="ef" * 32,
            hint="ifk_…",
            now=5.0,
            audit=lambda record: entry("keys.create", record.id, **unwritable),
        )
    assert await store.get_key(other) is None
    with pytest.raises(TypeError):
        await store.adjust_balance(
            key_id,
            add_micros=100,
            now=6.0,
            audit=lambda record: entry("keys.credits", record.id, **unwritable),
        )
    assert (await store.get_key(key_id)).balance_micros == 12  # type: ignore[union-attr]
    assert len(await store.list_audit(limit=10)) == 3


async def test_a_duplicate_key_is_a_conflict_that_changes_nothing(store: Store) -> None:
    await store.create_key(
        key_id=new_key_id(), name="first", key_hash="ab" * 32, hint="ifk_…", now=1.0
    )
    with pytest.raises(StoreConflict) as raised:
        await store.create_key(
            key_id=new_key_id(),
            name="second",
            key_hash="ab" * 32,
            hint="ifk_…",
            now=2.0,
            balance_micros=500,
        )
    assert raised.value.status_code == 409 and "api_keys" in raised.value.message
    assert await store.keys_fingerprint() == (1, 0)
    # Only the failed write was undone: the store goes on working.
    task = make_task()
    await store.insert_task(task)
    assert await store.get_task(task.id) is not None


async def test_counts_by_status(store: Store) -> None:
    for _ in range(2):
        await store.insert_task(make_task())
    await claim_one(store)
    assert await store.count_tasks_by_status() == {"queued": 1, "processing": 1}


async def test_record_upstream_is_fenced_and_survives_a_rescue(store: Store, clock: Clock) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store, lease=1)
    assert not await store.record_upstream(
        task.id, task.attempt + 1, upstream="relay-a", upstream_task_id="up_1"
    )
    assert await store.record_upstream(
        task.id, task.attempt, upstream="relay-a", upstream_task_id="up_1"
    )
    clock.advance(5)
    await store.rescue_expired()
    again = await claim_one(store)
    assert (again.upstream, again.upstream_task_id) == ("relay-a", "up_1")
    assert await store.complete(
        again.id,
        again.attempt,
        image_key="k",
        content_type="image/png",
        usage=None,
        upstream="relay-a",
    )


# Races and conflicts -----------------------------------------------------------
# On PostgreSQL these run on real concurrent connections (the pool); on SQLite the
# statements serialise, which is the point of that store.


async def test_concurrent_claimers_never_share_a_task(store: Store) -> None:
    now = time.time()
    ids = set()
    for index in range(200):
        task = make_task(now=now - 1 + index * 1e-4)
        ids.add(task.id)
        await store.insert_task(task)
    claimed: list[TaskId] = []

    async def claimer(number: int) -> None:
        while True:
            batch = await store.claim(
                worker_id=f"w{number}", limit=1 + number % 5, lease_seconds=30
            )
            if not batch:
                return
            claimed.extend(task.id for task in batch)

    await asyncio.gather(*(claimer(number) for number in range(32)))
    assert len(claimed) == len(set(claimed)) == 200
    assert set(claimed) == ids


async def test_a_rescued_attempt_can_no_longer_write(store: Store, clock: Clock) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store, lease=1)
    clock.advance(2)
    assert (await store.rescue_expired()).requeued == (task.id,)
    before = await store.get_task(task.id)
    stale = task.attempt
    assert not await store.renew_leases([(task.id, stale)], lease_seconds=100)
    assert not await store.complete(
        task.id, stale, image_key="k", content_type="image/png", usage=None
    )
    assert not await store.fail(task.id, stale, error="x", error_code="x")
    assert not await store.requeue(task.id, stale, delay_seconds=0, error="x", error_code="x")
    assert not await store.release(task.id, stale)
    assert not await store.record_upstream(task.id, stale, upstream="u", upstream_task_id="x")
    assert await store.get_task(task.id) == before


async def test_rescue_never_overwrites_a_completion(store: Store, clock: Clock) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store, lease=1)
    clock.advance(2)
    # The lease ran out but no rescuer came yet: the holder may still finish.
    assert await store.complete(
        task.id, task.attempt, image_key="k", content_type="image/png", usage=None
    )
    clock.advance(1)
    assert (await store.rescue_expired()) == RescueReport(requeued=(), failed=())
    stored = await store.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.COMPLETED


async def test_completion_racing_a_rescue_has_exactly_one_winner(
    store: Store, clock: Clock
) -> None:
    for _ in range(40):
        await store.insert_task(make_task(now=time.time() - 1))
    tasks = await store.claim(worker_id="w1", limit=40, lease_seconds=1)
    clock.advance(2)

    async def finish(task: Task) -> bool:
        return await store.complete(
            task.id, task.attempt, image_key="k", content_type="image/png", usage=None
        )

    results = await asyncio.gather(
        *(finish(task) for task in tasks[::2]),
        store.rescue_expired(),
        *(finish(task) for task in tasks[1::2]),
    )
    report = next(result for result in results if isinstance(result, RescueReport))
    finishers = tasks[::2] + tasks[1::2]
    completed = [task.id for task, done in zip(finishers, _bools(results), strict=True) if done]
    assert set(completed).isdisjoint(report.requeued)
    assert len(completed) + len(report.requeued) == 40
    for task in tasks:
        stored = await store.get_task(task.id)
        assert stored is not None
        expected = TaskStatus.COMPLETED if task.id in completed else TaskStatus.QUEUED
        assert stored.status is expected


def _bools(results: list[Any]) -> list[bool]:
    return [result for result in results if isinstance(result, bool)]


# Money on the store: charge on accept, refund once on failure -------------------


async def _limited_key(store: Store, balance: int) -> KeyId:
    key_id = new_key_id()
    await store.create_key(
        key_id=key_id,
        name="limited",
        key_hash=key_id.encode().hex().ljust(64, "0")[:64],
        hint="ifk_…",
        now=time.time(),
        balance_micros=balance,
    )
    return key_id


async def _balance(store: Store, key_id: KeyId) -> int | None:
    record = await store.get_key(key_id)
    assert record is not None
    return record.balance_micros


async def test_charge_on_accept_and_refund_once_on_failure(store: Store, database_url: str) -> None:
    key_id = await _limited_key(store, 100)
    _, replayed = await store.insert_task(make_task(key_id, price_micros=30))
    assert not replayed
    assert await _balance(store, key_id) == 70
    claimed = await claim_one(store)
    assert await store.fail(claimed.id, claimed.attempt, error="x", error_code="x")
    assert not await store.fail(claimed.id, claimed.attempt, error="x", error_code="x")
    assert await _balance(store, key_id) == 100
    kinds = [entry.kind for entry in await ledger_entries(database_url, key_id)]
    assert kinds == ["credit", "charge", "refund"]
    assert await ledger_sum(database_url, key_id) == 100


async def test_a_rescue_that_fails_a_task_refunds_it(
    store: Store, clock: Clock, database_url: str
) -> None:
    key_id = await _limited_key(store, 100)
    await store.insert_task(make_task(key_id, price_micros=40, max_attempts=1))
    task = await claim_one(store, lease=1)
    clock.advance(2)
    assert (await store.rescue_expired()).failed == (task.id,)
    assert await _balance(store, key_id) == 100 == await ledger_sum(database_url, key_id)


async def test_usage_reports_spend_and_what_was_refunded(store: Store) -> None:
    key_id = await _limited_key(store, 1_000)
    completed, failed, cancelled = (make_task(key_id, price_micros=p) for p in (30, 40, 50))
    for task in (completed, failed):
        await store.insert_task(task)
    claimed = {
        task.id: task for task in await store.claim(worker_id="w", limit=2, lease_seconds=30)
    }
    done = claimed[completed.id]
    assert await store.complete(
        done.id, done.attempt, image_key="k", content_type="image/png", usage=None
    )
    assert await store.fail(failed.id, claimed[failed.id].attempt, error="x", error_code="x")
    await store.insert_task(cancelled)
    await store.cancel_task(cancelled.id)
    (row,) = await store.usage(key_id, since=0)
    assert (row.tasks, row.completed, row.failed, row.unfinished) == (3, 1, 2, 0)
    # Spend is what was charged (120) less what was refunded (40 + 50), in micro-units.
    assert (row.spend_micros, row.refunded_micros, row.refunds) == (30, 90, 2)


async def test_insufficient_credits_create_nothing(store: Store) -> None:
    key_id = await _limited_key(store, 10)
    task = make_task(key_id, price_micros=30)
    with pytest.raises(InsufficientCredits):
        await store.insert_task(task)
    assert await store.get_task(task.id) is None
    assert await _balance(store, key_id) == 10


async def test_concurrent_charges_never_overdraw(store: Store, database_url: str) -> None:
    key_id = await _limited_key(store, 100)
    outcomes = await asyncio.gather(
        *(store.insert_task(make_task(key_id, price_micros=30)) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(outcome, tuple) for outcome in outcomes) == 3
    assert all(isinstance(o, tuple | InsufficientCredits) for o in outcomes)
    assert await _balance(store, key_id) == 10 == await ledger_sum(database_url, key_id)


async def test_idempotency_key_replays_conflicts_and_expires(store: Store) -> None:
    key_id = await _limited_key(store, 1000)
    claim = IdempotencyClaim(key="req-1", request_hash="a" * 64, ttl_seconds=60)
    now = time.time()
    first, replayed = await store.insert_task(
        make_task(key_id, price_micros=5, now=now), idempotency=claim
    )
    assert not replayed
    again, replayed = await store.insert_task(
        make_task(key_id, price_micros=5, now=now + 1), idempotency=claim
    )
    assert replayed and again.id == first.id
    assert await _balance(store, key_id) == 995
    with pytest.raises(IdempotencyConflict):
        await store.insert_task(
            make_task(key_id, now=now + 2),
            idempotency=IdempotencyClaim(key="req-1", request_hash="b" * 64, ttl_seconds=60),
        )
    later, replayed = await store.insert_task(make_task(key_id, now=now + 61), idempotency=claim)
    assert not replayed and later.id != first.id


async def test_concurrent_requests_with_one_idempotency_key_create_one_task(
    store: Store,
) -> None:
    key_id = await _limited_key(store, 1000)
    claim = IdempotencyClaim(key="same", request_hash="c" * 64, ttl_seconds=60)
    outcomes = await asyncio.gather(
        *(
            store.insert_task(make_task(key_id, price_micros=7), idempotency=claim)
            for _ in range(10)
        )
    )
    assert sorted(replayed for _, replayed in outcomes) == [False] + [True] * 9
    assert len({task.id for task, _ in outcomes}) == 1
    assert await _balance(store, key_id) == 993


async def test_unfinished_quota_holds_under_concurrent_creates(store: Store) -> None:
    key_id = await _limited_key(store, 1000)
    outcomes = await asyncio.gather(
        *(store.insert_task(make_task(key_id), max_unfinished=3) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(outcome, tuple) for outcome in outcomes) == 3
    assert all(isinstance(o, tuple | RateLimited) for o in outcomes)


async def test_adjust_balance_keeps_the_ledger_equal_to_the_balance(
    store: Store, database_url: str
) -> None:
    key_id = await _limited_key(store, 100)
    await store.insert_task(make_task(key_id, price_micros=30))
    assert (await store.adjust_balance(key_id, add_micros=50, now=1.0)).balance_micros == 120
    assert (await store.adjust_balance(key_id, set_micros=500, now=2.0)).balance_micros == 500
    assert await ledger_sum(database_url, key_id) == 500
    assert (await store.adjust_balance(key_id, unlimited=True, now=3.0)).balance_micros is None
    with pytest.raises(NotFound):
        await store.adjust_balance(KeyId("key_missing"), add_micros=1, now=4.0)


async def test_setting_a_balance_while_creates_run_keeps_ledger_and_balance_equal(
    store: Store,
    database_url: str,
) -> None:
    key_id = new_key_id()
    await store.create_key(
        key_id=key_id, name="u", key_hash="ef" * 32, hint="ifk_…", now=time.time()
    )
    creates = [store.insert_task(make_task(key_id, price_micros=5)) for _ in range(20)]
    adjust = store.adjust_balance(key_id, set_micros=1000, now=time.time())
    outcomes = await asyncio.gather(*creates[:10], adjust, *creates[10:])
    assert all(isinstance(o, tuple) for o in outcomes[:10] + outcomes[11:])
    balance = await _balance(store, key_id)
    assert balance is not None and balance == await ledger_sum(database_url, key_id)
    charges = [e for e in await ledger_entries(database_url, key_id) if e.kind == "charge"]
    assert len(charges) == 20


async def test_request_counters_per_key_and_window(store: Store) -> None:
    first, second = KeyId("key_first"), KeyId("key_second")
    assert [await store.count_request(first, window_start=60) for _ in range(3)] == [1, 2, 3]
    assert await store.count_request(first, window_start=120) == 1
    assert await store.count_request(second, window_start=60) == 1
    assert await store.prune_request_counts(older_than=120) == 2
    assert await store.count_request(first, window_start=60) == 1


# Lifecycle: listing, progress, cancel, the webhook outbox ---------------------------


async def test_listing_is_newest_first_by_creation_order_within_one_second(store: Store) -> None:
    key_id, other = KeyId("key_lister"), KeyId("key_other")
    now = time.time()
    # One created_at for all: the order is the creation order, not the clock.
    ids = []
    for n in range(7):
        task = make_task(key_id, now=now, model="gpt-image-2-r" if n % 2 else "gpt-image-2")
        await store.insert_task(task)
        ids.append(task.id)
    await store.insert_task(make_task(other, now=now))
    page = await store.list_tasks(key_id, limit=3)
    assert page is not None and [t.id for t in page.tasks] == ids[::-1][:3] and page.has_more
    rest = await store.list_tasks(key_id, limit=10, after=page.tasks[-1].id)
    assert rest is not None and [t.id for t in rest.tasks] == ids[::-1][3:]
    assert not rest.has_more
    odd = await store.list_tasks(key_id, limit=10, model="gpt-image-2-r")
    assert odd is not None and [t.id for t in odd.tasks] == ids[1::2][::-1]
    queued = await store.list_tasks(key_id, limit=10, status="queued", model="gpt-image-2")
    assert queued is not None and [t.id for t in queued.tasks] == ids[0::2][::-1]
    # Another key's task is no cursor; neither is an unknown one.
    theirs = await store.list_tasks(other, limit=5)
    assert theirs is not None
    (foreign,) = theirs.tasks
    assert await store.list_tasks(key_id, limit=5, after=foreign.id) is None
    assert await store.list_tasks(key_id, limit=5, after=TaskId("image_missing")) is None


async def test_a_page_is_stable_under_concurrent_inserts(store: Store) -> None:
    key_id = KeyId("key_busy")
    first = [make_task(key_id) for _ in range(5)]
    for task in first:
        await store.insert_task(task)
    page = await store.list_tasks(key_id, limit=2)
    assert page is not None
    await asyncio.gather(*(store.insert_task(make_task(key_id)) for _ in range(10)))
    rest = await store.list_tasks(key_id, limit=100, after=page.tasks[-1].id)
    assert rest is not None
    assert [t.id for t in page.tasks + rest.tasks] == [t.id for t in first[::-1]]


async def test_progress_is_fenced_only_rises_and_resets_on_requeue(store: Store) -> None:
    await store.insert_task(make_task())
    task = await claim_one(store)
    assert await store.record_progress(task.id, task.attempt, 40)
    assert not await store.record_progress(task.id, task.attempt, 30), "never goes down"
    assert not await store.record_progress(task.id, task.attempt + 1, 90), "not our attempt"
    assert (await store.get_task(task.id)).progress == 40  # type: ignore[union-attr]
    await store.requeue(task.id, task.attempt, delay_seconds=0, error="x", error_code="x")
    assert (await store.get_task(task.id)).progress is None  # type: ignore[union-attr]
    again = await claim_one(store)
    await store.complete(
        again.id, again.attempt, image_key="k", content_type="image/png", usage=None
    )
    assert (await store.get_task(task.id)).progress == 100  # type: ignore[union-attr]


async def test_cancel_queued_processing_and_finished(store: Store, database_url: str) -> None:
    from imageforge.store.base import CancelOutcome
    from imageforge.tasks import CANCELLED_CODE

    key_id = await _limited_key(store, 100)
    queued = make_task(key_id, price_micros=30)
    await store.insert_task(queued)
    assert await store.cancel_task(queued.id) is CancelOutcome.CANCELLED
    assert await store.cancel_task(queued.id) is CancelOutcome.UNCHANGED
    cancelled = await store.get_task(queued.id)
    assert cancelled is not None and cancelled.status is TaskStatus.FAILED
    assert cancelled.error_code == CANCELLED_CODE and cancelled.cancelled
    assert await _balance(store, key_id) == 100
    assert await store.claim(worker_id="w", limit=5, lease_seconds=30) == []

    await store.insert_task(make_task(key_id, price_micros=30))
    running = await claim_one(store)
    report = await store.keep_leases([(running.id, running.attempt)], lease_seconds=30)
    assert report.renewed == {running.id} and not report.cancel_requested
    assert await store.cancel_task(running.id) is CancelOutcome.REQUESTED
    assert await store.cancel_task(running.id) is CancelOutcome.UNCHANGED, "asked once"
    report = await store.keep_leases([(running.id, running.attempt)], lease_seconds=30)
    assert report.cancel_requested == {running.id}
    # The worker fails it; a second fail (a racing completion or rescue) changes nothing.
    assert await store.fail(running.id, running.attempt, error="cancelled", error_code="cancelled")
    assert not await store.complete(
        running.id, running.attempt, image_key="k", content_type="image/png", usage=None
    )
    assert await store.cancel_task(running.id) is CancelOutcome.UNCHANGED
    assert await _balance(store, key_id) == 100
    kinds = [entry.kind for entry in await ledger_entries(database_url, key_id)]
    assert kinds.count("refund") == 2


async def test_cancel_racing_the_claim_has_one_outcome(store: Store) -> None:
    from imageforge.store.base import CancelOutcome

    for _ in range(10):
        task = make_task()
        await store.insert_task(task)
        claimed, outcome = await asyncio.gather(
            store.claim(worker_id="w", limit=1, lease_seconds=30), store.cancel_task(task.id)
        )
        final = await store.get_task(task.id)
        assert final is not None
        if claimed:
            assert outcome is CancelOutcome.REQUESTED and final.cancel_requested_at is not None
            assert final.status is TaskStatus.PROCESSING
            await store.fail(task.id, claimed[0].attempt, error="x", error_code="x")
        else:
            assert outcome is CancelOutcome.CANCELLED and final.status is TaskStatus.FAILED


def _with_callback(**changes: Any) -> Task:
    return make_task(
        callback_url="http://127.0.0.1:9/hook", callback_base_url="http://api", **changes
    )


async def test_the_outbox_row_comes_with_the_end_of_the_task(store: Store, clock: Clock) -> None:
    from imageforge.store.base import WebhookOutcome

    done, plain, rescued = _with_callback(), make_task(), _with_callback(max_attempts=1)
    for task in (done, plain, rescued):
        await store.insert_task(task)
    assert await store.claim_webhooks(limit=10, lease_seconds=30) == []
    claimed = {t.id: t for t in await store.claim(worker_id="w", limit=3, lease_seconds=5)}
    for task_id in (done.id, plain.id):
        await store.complete(
            task_id, claimed[task_id].attempt, image_key="k", content_type="image/png", usage=None
        )
    clock.advance(10)
    await store.rescue_expired()  # the last attempt: rescued → failed
    due = await store.claim_webhooks(limit=10, lease_seconds=30)
    assert {d.task_id for d in due} == {done.id, rescued.id}
    assert {(d.url, d.base_url, d.attempts) for d in due} == {
        ("http://127.0.0.1:9/hook", "http://api", 0)
    }
    # Held by the claim until its lease runs out.
    assert await store.claim_webhooks(limit=10, lease_seconds=30) == []
    first = next(d for d in due if d.task_id == done.id)
    retry = WebhookOutcome("pending", 503, "HTTP 503", retry_in_seconds=60)
    assert await store.record_webhook_attempt(first, retry)
    assert not await store.record_webhook_attempt(first, retry), "fenced by the attempts seen"
    clock.advance(31)
    (again,) = await store.claim_webhooks(limit=10, lease_seconds=30)
    assert again.task_id == rescued.id, "the retry is not due yet"
    clock.advance(60)
    due = await store.claim_webhooks(limit=10, lease_seconds=30)
    assert {d.task_id for d in due} == {done.id, rescued.id}
    retried = next(d for d in due if d.task_id == done.id)
    assert retried.attempts == 1
    assert await store.record_webhook_attempt(retried, WebhookOutcome("delivered", 200, None))
    attempts = await store.webhook_attempts(done.id)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 503), (2, 200)]
    assert attempts[0].next_attempt_at is not None and attempts[1].next_attempt_at is None
    clock.advance(1000)
    (left,) = await store.claim_webhooks(limit=10, lease_seconds=30)
    assert left.task_id == rescued.id, "a delivered one is never claimed again"


async def test_concurrent_senders_never_share_a_delivery(store: Store) -> None:
    tasks = [_with_callback() for _ in range(20)]
    for task in tasks:
        await store.insert_task(task)
    for claimed in await store.claim(worker_id="w", limit=20, lease_seconds=30):
        await store.fail(claimed.id, claimed.attempt, error="x", error_code="x")
    batches = await asyncio.gather(
        *(store.claim_webhooks(limit=3, lease_seconds=30) for _ in range(10))
    )
    taken = [d.task_id for batch in batches for d in batch]
    assert len(taken) == len(set(taken)) == 20


async def test_webhook_secrets_and_their_rotation(store: Store) -> None:
    key_id = new_key_id()
    await store.create_key(
        key_id=key_id, name="k", key_hash="b" * 64, hint="h", now=time.time(),
        webhook_secret="whsec_first",
    )  # fmt: skip
    secrets = await store.webhook_secrets(key_id)
    assert secrets is not None and (secrets.current, secrets.previous) == ("whsec_first", None)
    assert await store.rotate_webhook_secret(key_id, secret="whsec_second", grace_seconds=3600)
    secrets = await store.webhook_secrets(key_id)
    assert secrets is not None and (secrets.current, secrets.previous) == (
        "whsec_second",
        "whsec_first",
    )
    assert not await store.rotate_webhook_secret(
        KeyId("key_missing"), secret="whsec_x", grace_seconds=1
    )
    assert await store.webhook_secrets(KeyId("key_missing")) is None


async def test_a_deleted_task_takes_its_webhook_rows_along(store: Store) -> None:
    from imageforge.store.base import WebhookOutcome

    task = _with_callback()
    await store.insert_task(task)
    claimed = await claim_one(store)
    await store.fail(claimed.id, claimed.attempt, error="x", error_code="x")
    (due,) = await store.claim_webhooks(limit=1, lease_seconds=0.0)
    await store.record_webhook_attempt(due, WebhookOutcome("pending", 500, "x", 0.0))
    assert await store.webhook_attempts(task.id)
    assert await store.delete_finished_tasks(finished_before=time.time() + 3600, limit=10) == 1
    assert await store.webhook_attempts(task.id) == []
    assert await store.claim_webhooks(limit=10, lease_seconds=30) == []
