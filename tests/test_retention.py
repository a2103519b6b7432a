"""Retention end to end: `expired` on the poll (cache or not), the janitor deleting
exactly what is past retention on every storage backend, and two janitors racing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from imageforge.errors import NotFound
from imageforge.ids import KeyId
from imageforge.retention import Retention
from imageforge.storage import Storage
from imageforge.store import Store, open_store, upgrade_database
from imageforge.testing.postgres import run_sync
from imageforge.testing.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from imageforge.worker.janitor import Janitor, apply_retention
from imageforge.worker.runner import storage_key_for
from tests.conftest import make_settings, start_harness
from tests.storages import Backend, download, read_all, s3_storage
from tests.test_store_contract import Clock, database_url, make_task  # noqa: F401

HOUR = 3600.0


async def _finished_task(store: Store, storage: Storage, *, fail: bool = False) -> tuple[str, str]:
    """A task run to its end on `store`, its image in `storage`; → (task id, image key)."""
    task = make_task(KeyId("key_retention"))
    await store.insert_task(task)
    (claimed,) = await store.claim(worker_id="w", limit=1, lease_seconds=30)
    key = storage_key_for(claimed, "image/png")
    if fail:
        assert await store.fail(claimed.id, claimed.attempt, error="no", error_code="x")
    else:
        await storage.put(key, b"image of " + claimed.id.encode(), "image/png")
        assert await store.complete(
            claimed.id, claimed.attempt, image_key=key, content_type="image/png", usage=None
        )
    return claimed.id, key


async def _sqlite_store(tmp_path: Path, clock: Clock) -> tuple[Store, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'retention.db'}"
    await asyncio.to_thread(upgrade_database, url)
    return await open_store(url, clock=clock), url


async def test_the_sweep_deletes_exactly_what_is_past_retention(
    tmp_path: Path, backend: Backend
) -> None:
    clock = Clock()
    store, _ = await _sqlite_store(tmp_path, clock)
    storage = backend.storage
    try:
        old_image = await _finished_task(store, storage)
        old_failed = await _finished_task(store, storage, fail=True)
        clock.advance(2 * HOUR)
        young = await _finished_task(store, storage)
        running = make_task()
        await store.insert_task(running)
        unrelated = "2026/01/01/notes.txt"  # not an image of a task: never touched
        await storage.put(unrelated, b"?", "text/plain")

        # Images kept an hour, rows kept forever.
        report = await apply_retention(store, storage, Retention(image_seconds=3600), now=clock())
        assert (report.images_deleted, report.tasks_deleted) == (1, 0)
        assert await read_all(storage, old_image[1]) is None
        old = await store.get_task(old_image[0])  # type: ignore[arg-type]
        assert old is not None and old.image_key is None
        assert await read_all(storage, young[1]) is not None
        assert await read_all(storage, unrelated) == b"?"
        assert await store.get_task(old_failed[0]) is not None  # type: ignore[arg-type]
        # Nothing is left to do: a second sweep deletes nothing.
        again = await apply_retention(store, storage, Retention(image_seconds=3600), now=clock())
        assert (again.images_deleted, again.tasks_deleted) == (0, 0)

        # Rows kept an hour too (their images first, whatever the image retention says).
        rows = Retention(image_seconds=30 * 86_400, task_seconds=3600)
        report = await apply_retention(store, storage, rows, now=clock())
        assert (report.images_deleted, report.tasks_deleted) == (0, 2)
        for task_id, _ in (old_image, old_failed):
            assert await store.get_task(task_id) is None  # type: ignore[arg-type]
        assert await store.get_task(young[0]) is not None  # type: ignore[arg-type]
        assert await store.get_task(running.id) is not None

        clock.advance(2 * HOUR)
        report = await apply_retention(store, storage, Retention(task_seconds=3600), now=clock())
        assert (report.images_deleted, report.tasks_deleted) == (1, 1)
        assert await read_all(storage, young[1]) is None
        assert {key async for key in storage.list("")} == {unrelated}
    finally:
        await store.close()


async def test_two_janitors_racing_delete_exactly_once_what_is_past_retention(
    database_url: str,  # noqa: F811
    moto_s3: MotoServer,
) -> None:
    """Two nodes, each with its own store and its own client of one bucket, apply the
    same retention at the same moment (and then both try to take the round's lease)."""
    clock = Clock()
    storage = s3_storage(moto_s3)
    store = await open_store(database_url, clock=clock)
    try:
        old = [await _finished_task(store, storage) for _ in range(30)]
        failed = [await _finished_task(store, storage, fail=True) for _ in range(10)]
        clock.advance(2 * HOUR)
        young = [await _finished_task(store, storage) for _ in range(10)]
        retention = Retention(task_seconds=3600)
        now = clock()

        async def other_node() -> tuple[int, int]:
            theirs = await open_store(database_url, clock=clock)
            try:
                report = await apply_retention(theirs, storage, retention, now=now)
                return report.images_deleted, report.tasks_deleted
            finally:
                await theirs.close()

        mine, theirs = await asyncio.gather(
            apply_retention(store, storage, retention, now=now),
            asyncio.to_thread(run_sync, other_node),
        )
        # Each image forgotten once and each row deleted once, between the two of them.
        assert mine.images_deleted + theirs[0] == len(old)
        assert mine.tasks_deleted + theirs[1] == len(old) + len(failed)
        for task_id, _ in old + failed:
            assert await store.get_task(task_id) is None  # type: ignore[arg-type]
        survivors = {key async for key in storage.list("")}
        assert survivors == {key for _, key in young}

        # With the lease, only one of two janitors does the round.
        janitors = [
            Janitor(store, storage, retention, holder=name, clock=clock) for name in ("a", "b")
        ]
        rounds = await asyncio.gather(*(janitor.sweep() for janitor in janitors))
        assert sorted(r is None for r in rounds) == [False, True]
    finally:
        await store.close()


async def test_task_retention_hides_finished_tasks_even_from_the_cache(tmp_path: Path) -> None:
    lifespan, api = await start_harness(
        make_settings(tmp_path / "data", task_retention_seconds=86_400)
    )
    try:
        key = await api.new_key()
        created = (await api.create(key)).json()
        body = await api.wait_terminal(key, created["id"])  # now in the terminal cache
        owner = await api.runtime.keyring.authenticate(key)
        service = api.runtime.service
        assert (await service.get(owner, created["id"])).id == created["id"]
        with pytest.raises(NotFound):
            await service.get(owner, created["id"], now=time.time() + 86_401)
        assert body["status"] == "completed"
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.mark.parametrize("storage", ["local", "s3"])
async def test_an_image_past_retention_is_expired_then_swept(
    tmp_path: Path, storage: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completed → link; past retention → `expired: true`, no link (the task is cached by
    then: the cache does not outlive retention); the janitor then deletes the image."""
    values: dict[str, Any] = {"image_retention_seconds": 2, "janitor_interval_seconds": 0.5}
    if storage == "s3":
        moto: MotoServer = request.getfixturevalue("moto_s3")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        values.update(
            storage="s3",
            s3_bucket=moto.create_bucket(),
            s3_endpoint_url=moto.endpoint_url,
            s3_region="us-east-1",
        )
    lifespan, api = await start_harness(make_settings(tmp_path / "data", **values))
    try:
        key = await api.new_key()
        created = (await api.create(key)).json()
        body = await api.wait_terminal(key, created["id"])
        assert body["status"] == "completed" and body["expired"] is False
        link = body["image_url"]
        fetch = api.client.get(link) if storage == "local" else download(link)
        assert (await fetch).status_code == 200
        task = await api.runtime.store.get_task(created["id"])  # type: ignore[arg-type]
        assert task is not None and task.image_key is not None and task.finished_at is not None
        await asyncio.sleep(max(0.0, task.finished_at + 2 - time.time()) + 0.1)
        late = (await api.poll(key, created["id"])).json()
        assert (late["status"], late["image_url"], late["expired"]) == ("completed", None, True)

        # The janitor deletes the object, then clears the row's key: wait for both.
        deadline = time.monotonic() + 15
        while (await read_all(api.runtime.storage, task.image_key)) is not None or (
            (swept := await api.runtime.store.get_task(task.id)) is not None
            and swept.image_key is not None
        ):
            assert time.monotonic() < deadline, "the janitor never swept the image"
            await asyncio.sleep(0.2)
        assert swept is not None and swept.image_key is None
        assert (await api.poll(key, created["id"])).json() == late
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
