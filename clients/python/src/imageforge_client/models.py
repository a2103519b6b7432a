"""The API's JSON shapes as typed, immutable objects.

Unknown fields are kept (`extra="allow"`, readable as attributes and in `model_extra`), never
rejected, so a server that adds a field never breaks an older client. Amounts are `Decimal`,
parsed from the JSON text, so money is never rounded through a float.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict

#: The four statuses of the contract; terminal ones never change.
TERMINAL_STATUSES = frozenset({"completed", "failed"})


class _ApiObject(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TaskCreated(_ApiObject):
    """Answer of create (`POST /v1/image2/images`): the task exists, with its id."""

    id: str
    object: str = "image"
    created: int
    model: str
    #: `queued` or `processing`.
    status: str
    error: str | None = None
    #: What the task costs the key (imageforge; charged now, given back if it fails).
    amount: Decimal | None = None
    #: Whether the charge went back to the key (imageforge; false on create).
    refunded: bool | None = None


class TaskResult(_ApiObject):
    """A task's state (`GET /v1/result/{id}`)."""

    id: str
    object: str = "image.generation"
    created: int
    model: str
    #: `queued` → `processing` → `completed` | `failed`.
    status: str
    #: Signed link to the image, only when `completed`; needs no API key.
    image_url: str | None = None
    #: Why the task failed, only when `failed`.
    error: str | None = None
    #: What the task costs the key (imageforge): its price, or 0 once it failed and was
    #: refunded.
    amount: Decimal | None = None
    #: True once the task failed and its charge went back to the key (imageforge).
    refunded: bool | None = None
    #: 0-100 where the server reports progress (an imageforge extension).
    progress: float | None = None
    #: True once a completed task's image is past the server's retention and gone (imageforge).
    expired: bool | None = None

    @property
    def done(self) -> bool:
        """Whether the task reached a terminal status (`completed` or `failed`)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_created(cls, created: TaskCreated) -> TaskResult:
        """The state a create answered, as a task object (for progress callbacks)."""
        return cls(
            id=created.id,
            created=created.created,
            model=created.model,
            status=created.status,
            error=created.error,
            amount=created.amount,
            refunded=created.refunded,
        )


class Quote(_ApiObject):
    """Answer of the dry run (`POST /v1/image2/images/quote`): nothing created or charged."""

    object: str = "image.quote"
    model: str
    size: str
    width: int
    height: int
    quality: str | None = None
    resolution: str
    billing_tier: str
    amount: Decimal
    currency: str


class UsageDay(_ApiObject):
    day: str
    model: str
    tasks: int
    completed: int
    failed: int
    unfinished: int
    spend: Decimal
    #: Refunded of these tasks' charges (already off `spend`); 0 from servers before it.
    refunded: Decimal = Decimal(0)
    #: How many of these tasks were refunded.
    refunds: int = 0


class Usage(_ApiObject):
    """The calling key's balance and spend (`GET /v1/usage`)."""

    object: str = "usage"
    key_id: str
    currency: str
    #: Credits left; None means unlimited.
    balance: Decimal | None = None
    spend: Decimal
    refunded: Decimal = Decimal(0)
    tasks: int
    days: list[UsageDay]


class TaskPage(_ApiObject):
    """One page of the caller's tasks, newest first (`GET /v1/tasks`)."""

    object: str = "list"
    data: list[TaskResult]
    has_more: bool
