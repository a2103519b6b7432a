"""The store interface: every task transition is a named, conditional write.

A transition method returns True when it applied and False when the task was no
longer in the expected state and attempt (someone else moved it: a rescuer, a
newer attempt). Callers treat False as "this task is not ours any more".

Leases and schedules are on the store's clock: callers pass durations (a lease of
so many seconds, a retry in so many seconds), never a time of their own, and the
store stamps every task transition. On PostgreSQL that clock is the database server's,
so nodes whose clocks disagree still agree on which leases have expired and which
tasks are due; on SQLite, one machine, it is that machine's.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from imageforge.errors import (
    IdempotencyConflict,
    ImageforgeError,
    RateLimited,
    ServiceUnavailable,
)
from imageforge.ids import KeyId, TaskId
from imageforge.tasks import Task

#: The error a rescued task carries (and, after its last attempt, fails with).
RESCUE_ERROR = "the worker processing this task stopped responding (lease expired)"


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached or is locked beyond the busy timeout (503)."""

    def __init__(self, message: str = "The database is unavailable; try again shortly.") -> None:
        super().__init__(message)


class StoreConflict(ImageforgeError):
    """A write would duplicate a row that must be unique (409); nothing was written."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"

    def __init__(self, table: str, columns: str) -> None:
        super().__init__(
            f"{table}.{columns}: must be unique, and a row with this value exists already; "
            "nothing was changed",
            param=columns,
        )


class DriverErrors:
    """Wraps every call a store makes to its driver and raises what `translate` makes of
    the driver's error: StoreUnavailable, StoreConflict, or nothing (the error stays a
    defect). A plain class, not a generator-based context manager: it wraps every call,
    and those cost more."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            translated = self.translate(exc)
            if translated is not None:
                raise translated from exc

    def translate(self, exc: BaseException) -> ImageforgeError | None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: KeyId
    name: str
    #: First and last characters of the key, for operators to recognise it.
    hint: str
    created_at: float
    revoked_at: float | None
    #: Credits left in micro-units at the time of reading; None is unlimited.
    balance_micros: int | None = None
    #: May call the admin API (`/v1/admin/*`).
    admin: bool = False
    #: May use the task API (create, poll, usage); an admin-only key may not.
    task_api: bool = True
    #: The `whsec_…` secret that signs this key's webhooks: set only on the record
    #: `create_key` returns (reads never load it); never compared or shown in a repr.
    webhook_secret: str | None = field(default=None, compare=False, repr=False)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: who (an admin key's id, or `cli`), what, to what, when."""

    at: float
    actor: str
    action: str
    target: str | None
    #: The action's parameters (never a secret), stored as JSON.
    details: dict[str, Any]
    request_id: str | None = None
    #: Set by the store; None before it is recorded.
    id: int | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key sent with a create, scoped to the calling API key."""

    key: str
    #: SHA-256 of the normalised request body: same key + other body → 422.
    request_hash: str
    #: How long a key is remembered (24 h).
    ttl_seconds: float


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One model on one UTC day for one key."""

    day: str
    model: str
    tasks: int
    completed: int
    failed: int
    unfinished: int
    #: Charges minus refunds of the tasks created that day, in micro-units.
    spend_micros: int
    #: What was refunded of those charges (failed and cancelled tasks), in micro-units.
    refunded_micros: int
    #: How many of those tasks were refunded (each at most once).
    refunds: int


_Result = TypeVar("_Result")

#: What an admin write records of itself, made from its result and written in the write's
#: transaction (None: nothing happened that needs a record, e.g. a key revoked already).
AuditOf = Callable[[_Result], "AuditEntry | None"]


def idempotency_mismatch() -> IdempotencyConflict:
    return IdempotencyConflict(
        "Idempotency-Key: this key was already used with a different request body; "
        "use a new key for a different request",
        param="Idempotency-Key",
    )


def too_many_unfinished(limit: int) -> RateLimited:
    return RateLimited(
        f"too many unfinished tasks: at most {limit} queued or processing per API key; "
        "wait for some to finish",
        retry_after=5,
        code="too_many_unfinished_tasks",
    )


@dataclass(frozen=True, slots=True)
class RescueReport:
    requeued: tuple[TaskId, ...]
    failed: tuple[TaskId, ...]


@dataclass(frozen=True, slots=True)
class LeaseReport:
    #: The tasks whose leases were renewed (still this worker's).
    renewed: set[TaskId]
    #: Of those, the ones a client asked to cancel: the worker stops them.
    cancel_requested: set[TaskId]


class CancelOutcome(enum.Enum):
    #: It was queued: it is failed (cancelled) and refunded now.
    CANCELLED = "cancelled"
    #: It is processing: the worker holding it was asked to stop it.
    REQUESTED = "requested"
    #: It had finished already, or a cancel was asked for before: nothing changed.
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class TaskPage:
    tasks: list[Task]
    has_more: bool


@dataclass(frozen=True, slots=True)
class DueWebhook:
    """A delivery a sender claimed: it has `lease_seconds` to attempt and record it."""

    task_id: TaskId
    key_id: KeyId
    url: str
    #: The public base URL the task was created on (its image link is built on it).
    base_url: str | None
    #: Attempts recorded before this one (the fencing token of the record).
    attempts: int


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    #: `pending` (try again after `retry_in_seconds`), `delivered` or `failed` (given up).
    state: Literal["pending", "delivered", "failed"]
    status_code: int | None
    error: str | None
    retry_in_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    #: When the next attempt is due; None when there will be none.
    next_attempt_at: float | None


@dataclass(frozen=True, slots=True)
class WebhookSecrets:
    current: str
    #: The secret before the last rotation, while it still signs (both are sent).
    previous: str | None


class Store(Protocol):
    # Keys -------------------------------------------------------------------
    async def create_key(
        self,
        *,
        key_id: KeyId,
        name: str,
        key_hash: str,
        hint: str,
        now: float,
        balance_micros: int | None = None,
        admin: bool = False,
        task_api: bool = True,
        webhook_secret: str | None = None,
        audit: AuditOf[ApiKeyRecord] | None = None,
    ) -> ApiKeyRecord:
        """A limited key (balance given) starts its ledger with a credit entry; the key's
        webhook secret is `webhook_secret`, else a new one (on the record returned).
        `audit`: the admin audit's entry for it, made from the record and written in the
        same transaction (so too for `adjust_balance` and `revoke_key`)."""
        ...

    async def get_key(self, key_id: KeyId) -> ApiKeyRecord | None: ...

    async def adjust_balance(
        self,
        key_id: KeyId,
        *,
        add_micros: int | None = None,
        set_micros: int | None = None,
        unlimited: bool = False,
        note: str | None = None,
        now: float,
        audit: AuditOf[ApiKeyRecord] | None = None,
    ) -> ApiKeyRecord:
        """Add to or set a key's credits, with a ledger entry; or make it unlimited.
        Raises NotFound for an unknown key, InvalidRequest for `add` on an unlimited key or
        a result below zero."""
        ...

    async def usage(self, key_id: KeyId, *, since: float) -> list[UsageRow]: ...

    async def prune_idempotency_keys(self, *, older_than: float) -> int: ...

    async def count_request(self, key_id: KeyId, *, window_start: int) -> int:
        """Add one request to the key's counter for that window; → the count so far.
        Shared by every API node on the database (and pruned with `older_than`)."""
        ...

    async def prune_request_counts(self, *, older_than: int) -> int: ...

    async def list_keys(self) -> list[ApiKeyRecord]: ...

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    async def revoke_key(
        self,
        key_id: KeyId,
        *,
        now: float,
        audit: AuditOf[bool] | None = None,
    ) -> bool:
        """Revoke a key not revoked yet (→ True); → False, and nothing audited, else."""
        ...

    async def keys_fingerprint(self) -> tuple[int, int]:
        """(keys, revoked keys): changes whenever a key is created or revoked."""
        ...

    # Tasks ------------------------------------------------------------------
    async def insert_task(
        self,
        task: Task,
        *,
        idempotency: IdempotencyClaim | None = None,
        max_unfinished: int | None = None,
    ) -> tuple[Task, bool]:
        """Accept a task in one transaction: replay an Idempotency-Key's task (→ its task,
        True), enforce the unfinished-task quota (RateLimited), charge `price_micros`
        with a ledger entry (InsufficientCredits), insert. → (task, False).

        A new task is claimable at once: its `run_after` is stored as the store's now
        when the task's own is later (an API node whose clock runs ahead), and the
        task returned is the one stored."""
        ...

    async def get_task(self, task_id: TaskId) -> Task | None: ...

    async def claim(self, *, worker_id: str, limit: int, lease_seconds: float) -> list[Task]:
        """queued → processing for up to `limit` tasks due by the store's clock, oldest
        first; bumps `attempt`; the lease runs `lease_seconds` on the store's clock."""
        ...

    async def renew_leases(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_seconds: float
    ) -> set[TaskId]:
        """Extend to `lease_seconds` from now the leases of the tasks still processing under
        these (id, attempt) claims, in one write; the ids renewed. A task missing from the
        answer is no longer this worker's."""
        ...

    async def complete(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        image_key: str,
        content_type: str,
        usage: dict[str, Any] | None,
        upstream: str | None = None,
    ) -> bool:
        """processing → completed, only for the holder of `attempt`."""
        ...

    async def record_upstream(
        self, task_id: TaskId, attempt: int, *, upstream: str, upstream_task_id: str
    ) -> bool:
        """Save the upstream's task id before waiting on it (not a status change)."""
        ...

    async def fail(self, task_id: TaskId, attempt: int, *, error: str, error_code: str) -> bool:
        """processing → failed, only for the holder of `attempt`; refunds the charge in the
        same transaction."""
        ...

    async def requeue(
        self,
        task_id: TaskId,
        attempt: int,
        *,
        delay_seconds: float,
        error: str,
        error_code: str,
    ) -> bool:
        """processing → queued after a retryable failure, claimable `delay_seconds` from
        now on the store's clock; the attempt stays spent."""
        ...

    async def release(self, task_id: TaskId, attempt: int) -> bool:
        """processing → queued on shutdown; the attempt is given back via max_attempts."""
        ...

    async def rescue_expired(self, *, limit: int = 500) -> RescueReport:
        """Leases expired by the store's clock: processing → queued, or → failed (and
        refunded) after the last attempt."""
        ...

    async def count_tasks_by_status(self) -> dict[str, int]: ...

    # Lifecycle: listing, progress, cancel, webhooks -------------------------

    def watch_changes(self, callback: Callable[[TaskId], None]) -> None:
        """Call `callback` (on the event loop) after every transition this store object
        commits: the in-process half of what wakes long-polls and event streams."""
        ...

    async def list_tasks(
        self,
        key_id: KeyId,
        *,
        limit: int,
        after: TaskId | None = None,
        status: str | None = None,
        model: str | None = None,
    ) -> TaskPage | None:
        """The key's tasks newest first (creation order), after the task `after`; None when
        `after` is not one of the key's tasks."""
        ...

    async def keep_leases(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_seconds: float
    ) -> LeaseReport:
        """`renew_leases`, also saying which of the renewed tasks a client cancelled."""
        ...

    async def record_progress(self, task_id: TaskId, attempt: int, progress: int) -> bool:
        """A processing task's 0–100 figure, only for the holder of `attempt`, only upwards."""
        ...

    async def cancel_task(self, task_id: TaskId) -> CancelOutcome:
        """queued → failed (cancelled, refunded, webhook queued) in one transaction; a
        processing task gets a cancel request; a finished one is left as it is."""
        ...

    async def claim_webhooks(self, *, limit: int, lease_seconds: float) -> list[DueWebhook]:
        """Up to `limit` due deliveries, each held for `lease_seconds` (many senders at
        once never take the same one)."""
        ...

    async def record_webhook_attempt(self, delivery: DueWebhook, outcome: WebhookOutcome) -> bool:
        """Book one attempt; False when the claim ran out and another sender took it."""
        ...

    async def webhook_attempts(self, task_id: TaskId) -> list[WebhookAttempt]: ...

    async def webhook_secrets(self, key_id: KeyId) -> WebhookSecrets | None:
        """The secrets that sign the key's webhooks now (None: no such key)."""
        ...

    async def rotate_webhook_secret(
        self, key_id: KeyId, *, secret: str, grace_seconds: float
    ) -> bool:
        """A new signing secret; the old one signs too for `grace_seconds`."""
        ...

    # Retention and the janitor's sweeps -------------------------------------
    async def take_sweep_lease(self, name: str, *, holder: str, lease_seconds: float) -> bool:
        """Take the lease on the sweep `name` for `lease_seconds` on the store's clock if it
        is free (never taken, or run out); → whether `holder` took it. Of many nodes
        asking at once, one gets it."""
        ...

    async def images_past_retention(
        self, *, finished_before: float, limit: int
    ) -> list[tuple[TaskId, str]]:
        """Completed tasks finished before the cutoff whose image is still stored, oldest
        first: (task id, image key)."""
        ...

    async def forget_images(self, images: Sequence[tuple[TaskId, str]]) -> int:
        """Clear the image key of each (task id, key) whose image was deleted, where the
        row still names that image; → how many rows changed."""
        ...

    async def delete_finished_tasks(self, *, finished_before: float, limit: int) -> int:
        """Delete up to `limit` finished task rows finished before the cutoff whose image
        is gone (no image key); their ledger rows stay. → how many."""
        ...

    # The admin audit ----------------------------------------------------------
    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append an admin action; → the entry with its id."""
        ...

    async def list_audit(self, *, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        """Newest first, at most `limit`, older than `before_id` when given."""
        ...

    async def ping(self) -> None: ...

    async def schema_revision(self) -> str | None:
        """The migration the schema is at (None: never migrated). StoreUnavailable when
        the database cannot be reached."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class WakesWorkers(Protocol):
    """Optional store capability: the database itself tells workers on every node that a
    task became claimable (PostgreSQL LISTEN/NOTIFY). Workers still poll: wake-ups can
    be lost."""

    async def listen_for_queued_tasks(self, callback: Callable[[], None]) -> None:
        """Run until cancelled, calling `callback` whenever a task may be claimable."""
        ...


@runtime_checkable
class AnnouncesChanges(Protocol):
    """Optional store capability: changes committed by other processes are announced
    (PostgreSQL LISTEN/NOTIFY with the task id; SQLite: the file changed, id unknown)."""

    async def listen_for_task_changes(self, callback: Callable[[TaskId | None], None]) -> None:
        """Run until cancelled: `callback(task_id)` when that task changed, `callback(None)`
        when any task may have changed (a reconnect, or a store that cannot tell)."""
        ...
