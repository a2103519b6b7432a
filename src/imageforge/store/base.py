"""The store interface: every task transition is a named, conditional write.

A transition method returns True when it applied and False when the task was no
longer in the expected state and attempt (someone else moved it: a rescuer, a
newer attempt). Callers treat False as "this task is not ours any more".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from imageforge.errors import ServiceUnavailable
from imageforge.ids import KeyId, TaskId
from imageforge.tasks import Task


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached or is locked beyond the busy timeout."""

    def __init__(self, message: str = "The database is unavailable; try again shortly.") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: KeyId
    name: str
    #: First and last characters of the key, for operators to recognise it.
    hint: str
    created_at: float
    revoked_at: float | None

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class RescueReport:
    requeued: tuple[TaskId, ...]
    failed: tuple[TaskId, ...]


class Store(Protocol):
    # Keys -------------------------------------------------------------------
    async def create_key(
        self, *, key_id: KeyId, name: str, key_hash: str, hint: str, now: float
    ) -> ApiKeyRecord: ...

    async def list_keys(self) -> list[ApiKeyRecord]: ...

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    async def revoke_key(self, key_id: KeyId, *, now: float) -> bool: ...

    async def keys_fingerprint(self) -> tuple[int, int]:
        """(keys, revoked keys): changes whenever a key is created or revoked."""
        ...

    # Tasks ------------------------------------------------------------------
    async def insert_task(self, task: Task) -> None: ...

    async def get_task(self, task_id: TaskId) -> Task | None: ...

    async def claim(
        self, *, worker_id: str, limit: int, lease_seconds: float, now: float
    ) -> list[Task]:
        """queued → processing for up to `limit` claimable tasks; bumps `attempt`."""
        ...

    async def heartbeat(self, task_id: TaskId, attempt: int, *, lease_until: float) -> bool: ...

    async def complete(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        image_key: str,
        content_type: str,
        usage: dict[str, Any] | None,
        upstream: str | None = None,
        now: float,
    ) -> bool:
        """processing → completed, only for the holder of `attempt`."""
        ...

    async def record_upstream(
        self, task_id: TaskId, attempt: int, *, upstream: str, upstream_task_id: str, now: float
    ) -> bool:
        """Save the upstream's task id before waiting on it (not a status change)."""
        ...

    async def fail(
        self, task_id: TaskId, attempt: int, *, error: str, error_code: str, now: float
    ) -> bool:
        """processing → failed, only for the holder of `attempt`."""
        ...

    async def requeue(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        run_after: float,
        error: str,
        error_code: str,
        now: float,
    ) -> bool:
        """processing → queued after a retryable failure; the attempt stays spent."""
        ...

    async def release(self, task_id: TaskId, attempt: int, *, now: float) -> bool:
        """processing → queued on shutdown; the attempt is given back via max_attempts."""
        ...

    async def rescue_expired(self, *, now: float, limit: int = 500) -> RescueReport:
        """Expired leases: processing → queued, or → failed after the last attempt."""
        ...

    async def count_tasks_by_status(self) -> dict[str, int]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
