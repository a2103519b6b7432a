"""What only the PostgreSQL store has: URLs, migrations, locking, connection failures.

Everything both stores share is in test_store_contract.py, which runs on both.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from imageforge.ids import TaskId, new_key_id
from imageforge.store import StoreUnavailable, open_store, upgrade_database
from imageforge.store.base import IdempotencyClaim
from imageforge.store.postgres import PostgresStore
from imageforge.testing.processes import cli_env, free_port
from tests.pg import PostgresServer, pg_connect, run_sync
from tests.test_store_contract import claim_one, make_task


def _respell(url: str, scheme: str) -> str:
    return url.replace("postgresql+asyncpg://", scheme, 1)


@pytest.mark.parametrize("scheme", ["postgresql+asyncpg://", "postgresql://", "postgres://"])
async def test_every_usual_url_spelling_works(pg_url: str, scheme: str) -> None:
    url = _respell(pg_url, scheme)
    await asyncio.to_thread(upgrade_database, url)
    store = await open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        await store.ping()
    finally:
        await store.close()


async def test_migrations_create_the_partial_queue_indexes(pg_url: str) -> None:
    connection = await pg_connect(pg_url)
    try:
        rows = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks'"
        )
        kinds = dict(
            await connection.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'tasks'"
            )
        )
    finally:
        await connection.close()
    indexes = {row[0]: row[1] for row in rows}
    assert "WHERE ((status)::text = 'queued'::text)" in indexes["ix_tasks_claimable"]
    assert "WHERE ((status)::text = 'processing'::text)" in indexes["ix_tasks_leases"]
    assert "(run_after, created_at)" in indexes["ix_tasks_claimable"]
    assert kinds["run_after"] == "double precision"


def test_concurrent_upgrades_of_a_new_database_take_turns(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database(migrate=False)
    # Every node upgrades at start-up; the advisory lock must make that safe.
    env = cli_env(tmp_path, IMAGEFORGE_DATABASE_URL=url)
    upgrades = [
        subprocess.Popen(
            [sys.executable, "-m", "imageforge", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(5)
    ]
    outputs = [(process.communicate(timeout=60)[0], process.returncode) for process in upgrades]
    assert all(code == 0 for _, code in outputs), outputs

    async def version() -> Any:
        connection = await pg_connect(url)
        try:
            return await connection.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await connection.close()

    assert run_sync(version) is not None


async def test_an_unreachable_server_is_unavailable_not_an_error(pg_url: str) -> None:
    closed = make_url(pg_url).set(port=free_port()).render_as_string(hide_password=False)
    with pytest.raises(StoreUnavailable):
        await open_store(closed)


async def test_the_store_survives_its_connections_being_killed(pg_url: str) -> None:
    store = await open_store(pg_url)
    try:
        await store.insert_task(make_task())
        admin = await pg_connect(pg_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'imageforge' AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        # At worst one call sees the dead connection (503); then the pool reconnects.
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(await store.count_tasks_by_status())
            except StoreUnavailable:
                outcomes.append(None)
            await asyncio.sleep(0.05)
        assert outcomes[-1] == {"queued": 1}
    finally:
        await store.close()


async def test_claim_skips_rows_locked_by_another_transaction(pg_url: str) -> None:
    store = await open_store(pg_url)
    now = time.time()
    first, second = make_task(now=now - 2), make_task(now=now - 1)
    try:
        for task in (first, second):
            await store.insert_task(task)
        locker = await pg_connect(pg_url)
        try:
            async with locker.transaction():
                await locker.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", first.id)
                started = time.monotonic()
                claimed = await store.claim(worker_id="w", limit=2, lease_seconds=30)
                # No waiting on the lock: the locked row is skipped, the next one taken.
                assert time.monotonic() - started < 1.0
                assert [task.id for task in claimed] == [second.id]
        finally:
            await locker.close()
        assert (await claim_one(store)).id == first.id
    finally:
        await store.close()


async def test_reads_in_one_event_loop_turn_share_one_round_trip(pg_url: str) -> None:
    store = await open_store(pg_url)
    try:
        tasks = [make_task() for _ in range(20)]
        for task in tasks:
            await store.insert_task(task)
        wanted = [task.id for task in tasks] + [task.id for task in tasks[:5]]
        wanted += [TaskId(f"image_missing_{n}") for n in range(5)]
        found = await asyncio.gather(*(store.get_task(task_id) for task_id in wanted))
        by_id = {task.id: task for task in tasks}
        assert found == [by_id.get(task_id) for task_id in wanted]
    finally:
        await store.close()


async def test_a_failed_shared_read_fails_every_reader_with_503(pg_url: str) -> None:
    store = await open_store(pg_url)
    try:
        assert isinstance(store, PostgresStore)
        store._pool.terminate()  # as if every connection died at once
        outcomes = await asyncio.gather(
            *(store.get_task(TaskId(f"image_{n}")) for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
        assert len({id(outcome) for outcome in outcomes}) == 5
    finally:
        await store.close()


async def _waiting_on_a_lock(admin: Any, *, application_name: str = "", pid: int = 0) -> bool:
    waiting: bool = await admin.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND (application_name = $1 OR pid = $2)",
        application_name,
        pid,
    )
    return waiting


async def _until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_create_racing_balance_changes_is_never_told_a_false_balance(
    pg_url: str,
) -> None:
    """Operators keep switching a key between unlimited and 1,000 micro-units while a
    create of a 30 micro-unit task waits on their row locks: at every moment the key can
    pay, so the create must succeed (it once gave up after three tries and answered 402
    with a balance of 0)."""
    store = await open_store(pg_url)
    key_id = new_key_id()
    await store.create_key(
        key_id=key_id, name="k", key_hash="9f" * 32, hint="ifk_…", now=1.0, balance_micros=1000
    )
    holders = [await pg_connect(pg_url), await pg_connect(pg_url)]
    admin = await pg_connect(pg_url)
    open_transactions: list[Any] = []

    async def lock_the_key(connection: Any) -> Any:
        transaction = connection.transaction()
        await transaction.start()
        open_transactions.append(transaction)
        await connection.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
        return transaction

    try:
        held = await lock_the_key(holders[0])
        await holders[0].execute("UPDATE api_keys SET balance_micros = NULL WHERE id = $1", key_id)
        creating = asyncio.create_task(store.insert_task(make_task(key_id, price_micros=30)))
        turns = 0
        for turn in range(1, 8):
            await _until(
                lambda: _done_or(
                    creating, _waiting_on_a_lock(admin, application_name="imageforge")
                ),
                "the create to wait on the key's row lock",
            )
            if creating.done():
                break
            turns = turn
            following = holders[turn % 2]
            locking = asyncio.create_task(lock_the_key(following))
            await _until(
                functools.partial(_waiting_on_a_lock, admin, pid=following.get_server_pid()),
                "the next operator to queue behind the create",
            )
            await held.commit()
            open_transactions.remove(held)
            held = await locking
            # The key flips: limited → unlimited → limited …, committed a turn later.
            value = None if turn % 2 == 0 else 1000
            await following.execute(
                "UPDATE api_keys SET balance_micros = $1 WHERE id = $2", value, key_id
            )
        task, replayed = await asyncio.wait_for(creating, 10)
        assert not replayed and turns >= 1
        assert await store.get_task(task.id) is not None
    finally:
        for transaction in open_transactions:
            await transaction.rollback()
        for connection in [*holders, admin]:
            await connection.close()
        await store.close()


async def _done_or(job: asyncio.Task[Any], condition: Any) -> bool:
    if job.done():
        condition.close()
        return True
    return bool(await condition)


async def test_a_deadlocked_create_is_retried_not_answered_503(pg_url: str) -> None:
    """An operator's transaction holds the key's row and then wants the Idempotency-Key
    a create has just taken: PostgreSQL breaks the deadlock by rolling the create back,
    and the store runs it again instead of reporting the database unavailable."""
    store = await open_store(pg_url)
    key_id = new_key_id()
    await store.create_key(
        key_id=key_id, name="k", key_hash="8e" * 32, hint="ifk_…", now=1.0, balance_micros=100
    )
    claim = IdempotencyClaim(key="same", request_hash="d" * 64, ttl_seconds=60)
    operator = await pg_connect(pg_url)
    admin = await pg_connect(pg_url)
    try:
        transaction = operator.transaction()
        await transaction.start()
        await operator.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
        task = make_task(key_id, price_micros=30)
        creating = asyncio.create_task(store.insert_task(task, idempotency=claim))
        await _until(
            lambda: _waiting_on_a_lock(admin, application_name="imageforge"),
            "the create to wait on the key's row",
        )
        # Waits on the create's uncommitted key: a cycle, which the server breaks.
        await operator.execute(
            "INSERT INTO idempotency_keys "
            "(key_id, idempotency_key, request_hash, task_id, created_at) "
            "VALUES ($1, 'same', $2, 'image_other', 0) ON CONFLICT DO NOTHING",
            key_id,
            "e" * 64,
        )
        await transaction.rollback()
        created, replayed = await asyncio.wait_for(creating, 10)
        assert created.id == task.id and not replayed
        record = await store.get_key(key_id)
        assert record is not None and record.balance_micros == 70
    finally:
        await operator.close()
        await admin.close()
        await store.close()
