"""The task: a frozen record of one generation request and where it is in its life.

The state machine (claim, complete, fail, requeue, release, rescue) is drawn once, in
docs/ARCHITECTURE.md, "The task state machine". Every transition is a conditional
UPDATE in the store, named after it, that applies only while the task is still in the
expected state and attempt.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from imageforge.ids import KeyId, TaskId

#: The error of a task a client cancelled starts with this word (the contract's rule).
CANCELLED_ERROR = "cancelled by the client"
CANCELLED_CODE = "cancelled"


class TaskStatus(enum.StrEnum):
    #: Accepted and waiting for a worker (also after a retryable failure or a rescue).
    QUEUED = "queued"
    #: Claimed by a worker that holds an unexpired lease on it.
    PROCESSING = "processing"
    #: Terminal: the image is stored and `image_key` names it.
    COMPLETED = "completed"
    #: Terminal: `error` says why, in words a client can show.
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Task:
    id: TaskId
    #: The API key that created the task; only that key can see it.
    key_id: KeyId
    model: str
    #: Engine the task was routed to when it was accepted.
    engine: str
    prompt: str
    #: None when the model ignores quality (gpt-image-2-r).
    quality: str | None
    width: int
    height: int
    ratio: str | None
    #: Resolution tier of width×height ("1k", "2k", "4k").
    resolution: str
    image_urls: tuple[str, ...]
    status: TaskStatus
    #: How many times a worker has claimed it; the fencing token of every worker write.
    attempt: int
    max_attempts: int
    #: Unix seconds (UTC) before which a queued task must not be claimed (retry backoff).
    run_after: float
    lease_expires_at: float | None
    worker_id: str | None
    image_key: str | None
    content_type: str | None
    error: str | None
    error_code: str | None
    usage: dict[str, Any] | None
    #: What the key was charged on acceptance, in micro-units; refunded if it fails.
    price_micros: int
    #: Upstream that served (or is serving) the task, for routing engines.
    upstream: str | None
    #: The task's id at that upstream, saved before waiting on it (resume after a crash).
    upstream_task_id: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    #: 0–100 while processing, where the engine reports how far along it is.
    progress: int | None = None
    #: When a client asked to cancel the task while it was processing (the worker holding
    #: it stops it and fails it as cancelled).
    cancel_requested_at: float | None = None
    #: Where the signed webhook goes when the task ends (`callback_url` on create).
    callback_url: str | None = None
    #: The public base URL the create came in on: the webhook's image link is built on it.
    callback_base_url: str | None = None

    @property
    def refunded(self) -> bool:
        """Whether the key got the charge back: the store refunds a priced task in the
        same transaction that fails it, so failed and refunded never disagree."""
        return self.status is TaskStatus.FAILED and self.price_micros > 0

    @property
    def cost_micros(self) -> int:
        """What the task costs its key: the price, or nothing once refunded."""
        return 0 if self.refunded else self.price_micros

    @property
    def created(self) -> int:
        """Unix seconds, as the contract's `created` field."""
        return int(self.created_at)

    @property
    def created_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, UTC)

    @classmethod
    def queued(
        cls,
        *,
        id: TaskId,
        key_id: KeyId,
        model: str,
        engine: str,
        prompt: str,
        quality: str | None,
        width: int,
        height: int,
        ratio: str | None,
        resolution: str,
        image_urls: tuple[str, ...],
        max_attempts: int,
        price_micros: int,
        now: float,
        callback_url: str | None = None,
        callback_base_url: str | None = None,
    ) -> Task:
        """A task as it is accepted: queued, never claimed, nothing recorded yet."""
        return cls(
            id=id,
            key_id=key_id,
            model=model,
            engine=engine,
            prompt=prompt,
            quality=quality,
            width=width,
            height=height,
            ratio=ratio,
            resolution=resolution,
            image_urls=image_urls,
            status=TaskStatus.QUEUED,
            attempt=0,
            max_attempts=max_attempts,
            run_after=now,
            lease_expires_at=None,
            worker_id=None,
            image_key=None,
            content_type=None,
            error=None,
            error_code=None,
            usage=None,
            price_micros=price_micros,
            upstream=None,
            upstream_task_id=None,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            callback_url=callback_url,
            callback_base_url=callback_base_url if callback_url is not None else None,
        )

    @property
    def cancelled(self) -> bool:
        """Failed because a client cancelled it."""
        return self.status is TaskStatus.FAILED and self.error_code == CANCELLED_CODE

    def evolve(self, **changes: Any) -> Task:
        return replace(self, **changes)
