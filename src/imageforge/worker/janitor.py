"""The janitor: removes images no task will ever link to.

A worker killed between storing its image and recording the completion, or one
whose lease was taken away mid-write, leaves a file named after its attempt that
the task never points at (the attempt is part of the storage key precisely so it
cannot overwrite the winner's image). Once the task is terminal and the file is
old enough that no worker can still be writing it, the file is an orphan.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from imageforge.ids import TaskId
from imageforge.storage import LocalStorage
from imageforge.store import Store

log = logging.getLogger(__name__)

#: `<task id>-<attempt>.<ext>`, as `worker.runner.storage_key_for` names images.
_IMAGE_NAME = re.compile(r"^(image_[0-9a-f-]{36})-(\d+)\.[a-z]+$")


#: Orphans appear while a task is being worked on, within days of its creation; images are
#: filed by creation day, so only the most recent days' folders are swept (not every image).
SWEPT_DAYS = 3


def _recent_folders(root: Path, now: float) -> list[Path]:
    days = {
        datetime.fromtimestamp(now - offset * 86_400, UTC).strftime("%Y/%m/%d")
        for offset in range(SWEPT_DAYS)
    }
    return [root / day for day in sorted(days) if (root / day).is_dir()]


def _candidates(root: Path, older_than: float) -> list[tuple[str, TaskId]]:
    found = []
    paths = (p for folder in _recent_folders(root, time.time()) for p in folder.iterdir())
    for path in paths:
        match = _IMAGE_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            if path.stat().st_mtime > older_than:
                continue
        except FileNotFoundError:
            continue
        found.append((path.relative_to(root).as_posix(), TaskId(match.group(1))))
    return found


async def sweep_orphan_images(
    store: Store, storage: LocalStorage, *, min_age_seconds: float
) -> int:
    """Delete image files of terminal tasks that are not the task's image; → how many."""
    candidates = await asyncio.to_thread(_candidates, storage.root, time.time() - min_age_seconds)
    removed = 0
    for key, task_id in candidates:
        task = await store.get_task(task_id)
        # Unknown tasks are left alone: the files may belong to another database.
        if task is None or not task.status.is_terminal or task.image_key == key:
            continue
        await storage.delete(key)
        removed += 1
    if removed:
        log.info("removed %d orphaned image(s)", removed)
    return removed
