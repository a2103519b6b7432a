"""The janitor: removes images no task will ever link to, and applies retention.

Orphans. A worker killed between storing its image and recording the completion, or
one whose lease was taken away mid-write, leaves an image named after its attempt that
the task never points at (the attempt is part of the storage key precisely so it
cannot overwrite the winner's image). Once the task is terminal and the image is old
enough that no worker can still be writing it (`orphan_grace_seconds`), it is an orphan.

Retention (`retention.Retention`). Images of tasks finished longer ago than the image
retention are deleted, then the task's image key is forgotten; rows of tasks finished
longer ago than the task retention are deleted once their image is gone (so no image is
ever left without its row), and their ledger rows are kept. Whether a task or image is
past retention is decided when it is read, so the sweep only reclaims space.

Uploads. The images clients upload to the OpenAI edits route (`uploads/`, see
`references.stored`) are needed until their tasks have run; they are deleted once older than
`upload_retention_seconds` (a task still queued by then fails, refunded, saying so).

Every worker's rescuer calls `Janitor.sweep` every `interval_seconds`; the round's lease
(a row in `sweep_leases`, on the store's clock) makes one node do each round. Every
write is conditional, so two janitors that do race (a round longer than its lease)
delete nothing twice and nothing else. It works through the `Storage` interface only
(a listing by prefix and age, deletes), so it sweeps any backend.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from imageforge.ids import TaskId
from imageforge.references.stored import UPLOAD_PREFIX
from imageforge.retention import Retention
from imageforge.storage import Storage
from imageforge.store import Store

log = logging.getLogger(__name__)

#: `<task id>-<attempt>.<ext>`, as `worker.runner.storage_key_for` names images.
_IMAGE_NAME = re.compile(r"^(image_[0-9a-f-]{36})-(\d+)\.[a-z]+$")

#: Orphans appear while a task is being worked on, within days of its creation; images are
#: filed by creation day, so only the most recent days' folders are swept (not every image).
SWEPT_DAYS = 3


def recent_day_prefixes(now: float) -> list[str]:
    """`YYYY/MM/DD/` of the swept days, as `storage_key_for` files images."""
    days = {
        datetime.fromtimestamp(now - offset * 86_400, UTC).strftime("%Y/%m/%d/")
        for offset in range(SWEPT_DAYS)
    }
    return sorted(days)


async def sweep_orphan_images(
    store: Store,
    storage: Storage,
    *,
    min_age_seconds: float,
    clock: Callable[[], float] = time.time,
) -> int:
    """Delete images of terminal tasks that are not the task's image; → how many."""
    now = clock()
    removed = 0
    for prefix in recent_day_prefixes(now):
        async for key in storage.list(prefix, older_than=now - min_age_seconds):
            match = _IMAGE_NAME.match(key.removeprefix(prefix))
            if match is None:
                continue
            task = await store.get_task(TaskId(match.group(1)))
            # Unknown tasks are left alone: the images may belong to another database.
            if task is None or not task.status.is_terminal or task.image_key == key:
                continue
            await storage.delete(key)
            removed += 1
    if removed:
        log.info("removed %d orphaned image(s)", removed)
    return removed


#: Rows read, images deleted and rows deleted per step of a retention sweep.
RETENTION_BATCH = 500
#: Images deleted at once (each is one request on S3).
DELETES_AT_ONCE = 16
#: The name of the janitor's round in `sweep_leases`.
SWEEP_LEASE = "janitor"


@dataclass(frozen=True)
class RetentionReport:
    images_deleted: int = 0
    tasks_deleted: int = 0


async def apply_retention(
    store: Store, storage: Storage, retention: Retention, *, now: float
) -> RetentionReport:
    """Delete what is past retention at `now`: images (then forget their keys), then
    the rows of finished tasks that no longer have an image."""
    images = tasks = 0
    image_cutoff = retention.image_cutoff(now)
    while image_cutoff is not None:
        found = await store.images_past_retention(
            finished_before=image_cutoff, limit=RETENTION_BATCH
        )
        await _delete_images(storage, [key for _, key in found])
        images += await store.forget_images(found)
        if len(found) < RETENTION_BATCH:
            break
    task_cutoff = retention.task_cutoff(now)
    while task_cutoff is not None:
        deleted = await store.delete_finished_tasks(
            finished_before=task_cutoff, limit=RETENTION_BATCH
        )
        tasks += deleted
        if deleted < RETENTION_BATCH:
            break
    if images or tasks:
        log.info("retention: deleted %d image(s) and %d finished task(s)", images, tasks)
    return RetentionReport(images_deleted=images, tasks_deleted=tasks)


async def _delete_images(storage: Storage, keys: Sequence[str]) -> None:
    for start in range(0, len(keys), DELETES_AT_ONCE):
        await asyncio.gather(*(storage.delete(k) for k in keys[start : start + DELETES_AT_ONCE]))


async def sweep_uploads(storage: Storage, *, older_than: float) -> int:
    """Delete uploaded references written before `older_than` (Unix seconds); → how many."""
    keys = [key async for key in storage.list(UPLOAD_PREFIX, older_than=older_than)]
    await _delete_images(storage, keys)
    if keys:
        log.info("removed %d uploaded image(s) past their retention", len(keys))
    return len(keys)


@dataclass(frozen=True)
class SweepReport:
    orphans_removed: int
    retention: RetentionReport
    uploads_removed: int = 0


@dataclass
class Janitor:
    """One node's janitor; `sweep` does a round when this node takes the round's lease."""

    store: Store
    storage: Storage
    retention: Retention
    #: Who holds the lease (the worker's id).
    holder: str
    interval_seconds: float = 3600.0
    orphan_grace_seconds: float = 3600.0
    upload_retention_seconds: float = 7 * 86_400.0
    clock: Callable[[], float] = time.time

    async def sweep(self) -> SweepReport | None:
        """Sweep orphans and apply retention, unless another node has this round;
        → what was removed, or None when the round was not ours."""
        # A little shorter than the interval, so whoever sweeps can take the next round
        # on time however its timer drifts.
        lease = self.interval_seconds * 0.9
        if not await self.store.take_sweep_lease(
            SWEEP_LEASE, holder=self.holder, lease_seconds=lease
        ):
            return None
        orphans = await sweep_orphan_images(
            self.store,
            self.storage,
            min_age_seconds=self.orphan_grace_seconds,
            clock=self.clock,
        )
        report = await apply_retention(self.store, self.storage, self.retention, now=self.clock())
        uploads = await sweep_uploads(
            self.storage, older_than=self.clock() - self.upload_retention_seconds
        )
        return SweepReport(orphans_removed=orphans, retention=report, uploads_removed=uploads)
