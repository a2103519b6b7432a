"""The janitor: removes images no task will ever link to.

A worker killed between storing its image and recording the completion, or one
whose lease was taken away mid-write, leaves an image named after its attempt that
the task never points at (the attempt is part of the storage key precisely so it
cannot overwrite the winner's image). Once the task is terminal and the image is
old enough that no worker can still be writing it, the image is an orphan.

The rescuer runs the sweep hourly. It works through the `Storage` interface only
(a listing by prefix and age, then deletes), so it sweeps any backend.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from imageforge.ids import TaskId
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
