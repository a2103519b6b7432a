"""Orphaned images (from killed or stale attempts) are removed; nothing else is."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from imageforge.store import open_store, upgrade_database
from imageforge.worker.janitor import sweep_orphan_images
from imageforge.worker.runner import storage_key_for
from tests.storages import Backend
from tests.test_store_contract import make_task


async def test_sweep_removes_only_old_images_no_terminal_task_points_at(
    tmp_path: Path, backend: Backend
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'j.db'}"
    await asyncio.to_thread(upgrade_database, url)
    store = await open_store(url)
    storage = backend.storage
    try:
        now = time.time()
        done = make_task(now=now - 10)
        await store.insert_task(done)
        # Attempt 1 wrote its image, then lost the task; attempt 2 completed it.
        first = (await store.claim(worker_id="w", limit=1, lease_seconds=30))[0]
        orphan = storage_key_for(first, "image/png")
        await storage.put(orphan, b"orphan", "image/png")
        assert await store.requeue(
            first.id, first.attempt, delay_seconds=0, error="x", error_code="x"
        )
        second = (await store.claim(worker_id="w", limit=1, lease_seconds=30))[0]
        assert second.attempt == 2
        winner = storage_key_for(second, "image/png")
        await storage.put(winner, b"winner", "image/png")
        assert await store.complete(
            second.id,
            second.attempt,
            image_key=winner,
            content_type="image/png",
            usage=None,
        )
        running = make_task(now=now - 5)
        await store.insert_task(running)
        by_id = {t.id: t for t in await store.claim(worker_id="w", limit=1, lease_seconds=30)}
        # `running` is still being worked on: its image may be mid-write.
        in_progress = storage_key_for(by_id[running.id], "image/png")
        await storage.put(in_progress, b"writing", "image/png")
        # An image of a task this database does not know, and a file not named like one.
        day = time.strftime("%Y/%m/%d", time.gmtime(now))
        stranger = f"{day}/image_00000000-0000-4000-8000-000000000000-1.png"
        await storage.put(stranger, b"?", "image/png")
        other = f"{day}/notes.txt"
        await storage.put(other, b"?", "text/plain")
        everything = {orphan, winner, in_progress, stranger, other}

        assert await sweep_orphan_images(store, storage, min_age_seconds=60) == 0  # all young
        # An hour later, every image is old enough.
        removed = await sweep_orphan_images(
            store, storage, min_age_seconds=60, clock=lambda: time.time() + 3600
        )
        assert removed == 1
        remaining = {key async for key in storage.list("")}
        assert remaining == everything - {orphan}
    finally:
        await store.close()
