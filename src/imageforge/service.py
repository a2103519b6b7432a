"""The use cases behind the API: create a task, read a task.

Knows nothing of HTTP. Terminal tasks never change, so they are cached in memory:
the poll endpoint is the hottest path and most polls of a finished task then
never touch the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from imageforge.catalog import ModelSpec, resolve_request
from imageforge.errors import NotFound
from imageforge.ids import TaskId, looks_like_task_id, new_task_id
from imageforge.store import ApiKeyRecord, Store
from imageforge.tasks import Task, TaskStatus
from imageforge.wire import CreateImageRequest

_MAX_CACHED_TASKS = 50_000


def task_not_found(task_id: str) -> NotFound:
    # One message for "unknown" and "another key's": existence is never revealed.
    return NotFound(f"No task found with id '{task_id[:100]}'.", param="id", code="task_not_found")


class ImageService:
    def __init__(
        self,
        store: Store,
        models: Mapping[str, ModelSpec],
        *,
        max_attempts: int,
        on_task_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._models = models
        self._max_attempts = max_attempts
        self.on_task_queued = on_task_queued
        self._terminal: dict[str, Task] = {}

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        return self._models

    async def create(self, owner: ApiKeyRecord, body: CreateImageRequest) -> Task:
        resolved = resolve_request(
            model=body.model,
            prompt=body.prompt,
            quality=body.quality,
            ratio=body.ratio,
            resolution=body.resolution,
            size=body.size,
            image_urls=body.image_urls,
            models=self._models,
        )
        now = time.time()
        task = Task(
            id=new_task_id(),
            key_id=owner.id,
            model=resolved.model,
            engine=self._models[resolved.model].engine,
            prompt=resolved.prompt,
            quality=resolved.quality,
            width=resolved.width,
            height=resolved.height,
            ratio=resolved.ratio,
            resolution=resolved.resolution,
            image_urls=resolved.image_urls,
            status=TaskStatus.QUEUED,
            attempt=0,
            max_attempts=self._max_attempts,
            run_after=now,
            lease_expires_at=None,
            worker_id=None,
            image_key=None,
            content_type=None,
            error=None,
            error_code=None,
            usage=None,
            upstream=None,
            upstream_task_id=None,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
        )
        await self._store.insert_task(task)
        self.on_task_queued()
        return task

    async def get(self, owner: ApiKeyRecord, task_id: str) -> Task:
        task = self._terminal.get(task_id)
        if task is None:
            if not looks_like_task_id(task_id):
                raise task_not_found(task_id)
            task = await self._store.get_task(TaskId(task_id))
            if task is None:
                raise task_not_found(task_id)
            if task.status.is_terminal:
                if len(self._terminal) >= _MAX_CACHED_TASKS:
                    # Drop the oldest entry (dicts keep insertion order).
                    del self._terminal[next(iter(self._terminal))]
                self._terminal[task_id] = task
        if task.key_id != owner.id:
            raise task_not_found(task_id)
        return task
