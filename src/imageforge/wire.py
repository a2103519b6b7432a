"""The JSON shapes of the public API and the CLI's `--json`: one source for each.

The pydantic models document every shape (OpenAPI, clients). The builders at the end
make the dicts that are actually sent: plain dict building, so the hot routes (poll,
create) pay no validation per request; tests/test_wire.py checks every builder
against its model (same keys, valid types).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imageforge.billing import to_json_number
from imageforge.catalog import MAX_PROMPT_CHARS, MAX_URL_CHARS, URL_PATTERN
from imageforge.sizes import RATIOS, SIZE_PATTERN
from imageforge.tasks import TaskStatus

if TYPE_CHECKING:
    from imageforge.catalog import ResolvedRequest
    from imageforge.store.base import ApiKeyRecord, AuditEntry, UsageRow, WebhookAttempt
    from imageforge.tasks import Task

TaskStatusName = Literal["queued", "processing", "completed", "failed"]


class CreateImageRequest(BaseModel):
    """Body of `POST /v1/image2/images`. Unknown fields are ignored, `null` means "not sent"."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "gpt-image-2",
                    "prompt": "A serene mountain lake at sunset, photorealistic",
                },
                {
                    "model": "gpt-image-2",
                    "prompt": "A lighthouse on a cliff, golden hour",
                    "quality": "high",
                    "ratio": "16:9",
                    "resolution": "4k",
                },
                {
                    "model": "gpt-image-2-r",
                    "prompt": "Product shot in the style of the references",
                    "size": "1536x1024",
                    "image_urls": ["https://example.com/ref-1.png"],
                },
            ]
        },
    )

    model: str = Field(
        description="`gpt-image-2` (by quality tier, up to 4K, 6 references) or `gpt-image-2-r` "
        "(by resolution, 1K only, 16 references); more can be configured.",
        examples=["gpt-image-2"],
    )
    prompt: str = Field(
        description="What to draw. Must not be empty after trimming; at most 32,000 characters.",
        examples=["A serene mountain lake at sunset, photorealistic"],
        # What catalog.py enforces, stated for the document only: the rules themselves
        # answer with their own messages.
        json_schema_extra={"minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": r"\S"},
    )
    quality: str | None = Field(
        None,
        description="`low` (default), `medium` or `high`; case-insensitive. Ignored (not "
        "rejected) by models billed by resolution such as `gpt-image-2-r`.",
        json_schema_extra={"enum": ["low", "medium", "high", None]},
        examples=["low"],
    )
    ratio: str | None = Field(
        None,
        description="Aspect ratio, default `1:1`. Required when `resolution` is sent "
        "(unless `size` is).",
        json_schema_extra={"enum": [*RATIOS, None]},
        examples=["16:9"],
    )
    resolution: str | None = Field(
        None,
        description="`1k` (default), `2k` or `4k` (case-insensitive). `2k`/`4k` only for "
        "`gpt-image-2`; `4k` only with ratios 16:9, 9:16, 2:1, 1:2, 21:9, 9:21.",
        json_schema_extra={"enum": ["1k", "2k", "4k", None]},
        examples=["1k"],
    )
    size: str | None = Field(
        None,
        description="Exact `{W}x{H}` in pixels; overrides `ratio` and `resolution`. Both edges "
        "multiples of 16, longest edge ≤ 3840, long:short ≤ 3:1, 655,360 ≤ W·H ≤ 8,294,400.",
        examples=["1536x1024"],
        json_schema_extra=lambda schema: _constrain(schema, {"pattern": SIZE_PATTERN}),
    )
    image_urls: list[str] | None = Field(
        None,
        description="Reference image URLs (http/https, no credentials; PNG, JPEG, WebP or GIF): "
        "at most 6 for `gpt-image-2`, 16 for `gpt-image-2-r`.",
        examples=[["https://example.com/reference.png"]],
        json_schema_extra=lambda schema: _constrain(
            schema,
            {
                "items": {
                    "type": "string",
                    "format": "uri",
                    "minLength": len("http://x"),
                    "maxLength": MAX_URL_CHARS,
                    "pattern": URL_PATTERN,
                }
            },
        ),
    )

    callback_url: str | None = Field(
        None,
        description="When the task ends (completed or failed), POST its `GET /v1/result/{id}` "
        "object here, signed per Standard Webhooks with the key's `whsec_…` secret "
        "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). http or https; private, "
        "loopback and link-local addresses are refused unless allow-listed "
        "(`IMAGEFORGE_REFERENCE_ALLOWLIST`). Retried for about a day until a 2xx; 410 stops.",
        examples=["https://example.com/hooks/imageforge"],
        json_schema_extra=lambda schema: _constrain(
            schema,
            {
                "format": "uri",
                "minLength": len("http://x"),
                "maxLength": MAX_URL_CHARS,
                "pattern": URL_PATTERN,
            },
        ),
    )


def _constrain(schema: dict[str, Any], constraints: dict[str, Any]) -> None:
    """Add `constraints` to the non-null branch of an optional field's schema."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") != "null":
            branch.update(constraints)


class TaskCreated(BaseModel):
    """Answer of `POST /v1/image2/images`: the task exists and is queued."""

    id: str = Field(
        description="`image_` + UUID4.", examples=["image_fd35ee52-2a98-44a6-b930-29a88ce9b8fd"]
    )
    object: Literal["image"] = Field("image", description="Always `image`.")
    created: int = Field(description="Unix seconds.", examples=[1774836724])
    model: str = Field(description="The model the task was created for.", examples=["gpt-image-2"])
    status: TaskStatusName = Field(description="`queued` or `processing`.", examples=["queued"])
    error: str | None = Field(None, description="Always null on a successful create.")
    amount: float = Field(
        description="What the task costs the key, in currency units: charged now, and "
        "given back if the task fails (its poll then shows 0 and `refunded: true`).",
        examples=[0.053],
    )
    refunded: bool = Field(
        description="Always false here: a task is refunded only once it has failed.",
        examples=[False],
    )


class TaskResult(BaseModel):
    """Answer of `GET /v1/result/{id}`."""

    id: str = Field(
        description="The task id (`image_` + UUID4).",
        examples=["image_fd35ee52-2a98-44a6-b930-29a88ce9b8fd"],
    )
    object: Literal["image.generation"] = Field(
        "image.generation", description="Always `image.generation`."
    )
    created: int = Field(description="Unix seconds.", examples=[1774836724])
    model: str = Field(description="The model the task was created for.", examples=["gpt-image-2"])
    status: TaskStatusName = Field(
        description="`queued` → `processing` → `completed` | `failed`; terminal states never "
        "change.",
        examples=["completed"],
    )
    image_url: str | None = Field(
        None,
        description="Signed link to the image, only when `completed`; needs no API key and "
        "expires after 24 hours (configurable).",
        examples=["http://127.0.0.1:8000/files/2026/11/24/image_fd35….png?expires=…&signature=…"],
    )
    error: str | None = Field(
        None, description="Why the task failed, only when `failed`.", examples=[None]
    )
    amount: float = Field(
        description="What the task costs the key, in currency units: its price, or 0 once "
        "it failed and the charge was given back.",
        examples=[0.053],
    )
    expired: bool = Field(
        False,
        description="True when the task is `completed` but its image is past the server's "
        "image retention and deleted: `image_url` is then null. Always present.",
        examples=[False],
    )
    refunded: bool = Field(
        description="True once the task failed and its charge went back to the key (a "
        "free task has nothing to refund); false otherwise.",
        examples=[False],
    )
    progress: int | None = Field(
        None,
        ge=0,
        le=100,
        description="How far along the task is, 0–100, where the engine reports it (the "
        "offline engine and the relay do); 100 once completed; null while queued, for "
        "engines that do not report, and once failed.",
        examples=[50],
    )


class TaskList(BaseModel):
    """Answer of `GET /v1/tasks`: the caller's tasks, newest first."""

    object: Literal["list"] = Field("list", description="Always `list`.")
    data: list[TaskResult] = Field(description="Up to `limit` tasks, as `GET /v1/result/{id}`.")
    has_more: bool = Field(
        description="More tasks follow: ask again with `after` = the last id of `data`."
    )


class DeliveryAttempt(BaseModel):
    attempt: int = Field(description="1 for the first attempt, then 2, 3, …", examples=[1])
    at: float = Field(description="Unix seconds when the attempt ended.")
    status_code: int | None = Field(
        description="The receiver's HTTP status; null when none came back.", examples=[200]
    )
    error: str | None = Field(
        description="Why the attempt did not count (a non-2xx status, a timeout, a refused "
        "address); null when it was delivered.",
        examples=[None],
    )
    next_attempt_at: float | None = Field(
        description="Unix seconds when the next attempt is due; null when none will follow."
    )


class DeliveryList(BaseModel):
    """Answer of `GET /v1/result/{id}/deliveries`: the task's webhook attempts, oldest first."""

    object: Literal["list"] = Field("list", description="Always `list`.")
    data: list[DeliveryAttempt] = Field(description="Empty until the first attempt.")


class QuoteResponse(BaseModel):
    """Answer of `POST /v1/image2/images/quote`: nothing was created or charged."""

    object: Literal["image.quote"] = Field("image.quote", description="Always `image.quote`.")
    model: str = Field(description="The resolved model name.", examples=["gpt-image-2"])
    size: str = Field(description="The resolved `WxH`.", examples=["1536x864"])
    width: int = Field(description="Width in pixels.", examples=[1536])
    height: int = Field(description="Height in pixels.", examples=[864])
    quality: str | None = Field(
        description="Resolved quality; null for models that ignore it.", examples=["medium"]
    )
    resolution: str = Field(description="Resolution tier of the size.", examples=["1k"])
    billing_tier: str = Field(
        description="What the price depends on: the quality tier or the resolution.",
        examples=["medium"],
    )
    amount: float = Field(description="Price in currency units.", examples=[0.053])
    currency: str = Field(description="Currency of `amount`.", examples=["USD"])


class UsageDay(BaseModel):
    day: str = Field(description="UTC date, YYYY-MM-DD.", examples=["2026-11-24"])
    model: str = Field(description="Model name.", examples=["gpt-image-2"])
    tasks: int = Field(description="Tasks created that day.")
    completed: int = Field(description="Of those, completed.")
    failed: int = Field(description="Of those, failed (and refunded).")
    unfinished: int = Field(description="Still queued or processing.")
    spend: float = Field(
        description="Charges minus refunds, in currency units: the sum of these tasks' `amount`."
    )
    refunded: float = Field(
        description="What was refunded of these tasks' charges (failed and cancelled tasks), "
        "in currency units; already taken off `spend`.",
        examples=[0.053],
    )
    refunds: int = Field(description="Of these tasks, how many were refunded.")


class UsageResponse(BaseModel):
    """Answer of `GET /v1/usage`: the calling key's balance and spend."""

    object: Literal["usage"] = Field("usage", description="Always `usage`.")
    key_id: str = Field(description="The calling key's id.", examples=["key_3f9a0c1d2e4b5a69"])
    currency: str = Field(description="Currency of every amount.", examples=["USD"])
    balance: float | None = Field(description="Credits left; null means unlimited.")
    spend: float = Field(description="Total of `days` in currency units.")
    refunded: float = Field(description="Refunds of `days` in currency units.")
    tasks: int = Field(description="Tasks created in the period.")
    days: list[UsageDay] = Field(description="One row per UTC day and model, oldest first.")


class ErrorDetail(BaseModel):
    message: str = Field(
        description="What went wrong, in words a client can show; for bad input it starts "
        "with the field and names the rule.",
        examples=["size: both edges must be multiples of 16 (got 1000x1000)"],
    )
    type: str = Field(
        description="Error class: invalid_request_error, authentication_error, "
        "not_found_error, insufficient_credits, idempotency_error, rate_limit_error, "
        "server_error.",
        examples=["invalid_request_error"],
    )
    param: str | None = Field(
        None, description="The request field or header at fault, if any.", examples=["size"]
    )
    code: str | None = Field(
        None, description="Machine-readable reason.", examples=["invalid_size"]
    )


class ErrorResponse(BaseModel):
    """Every error: the HTTP status plus an OpenAI-style body."""

    error: ErrorDetail = Field(description="The error.")


class KeyCreated(BaseModel):
    """`imageforge keys create --json`, its last line: the secret is shown only here."""

    id: str = Field(description="The key's id.", examples=["key_3f9a0c1d2e4b5a69"])
    key: str = Field(description="The secret to send as `Authorization: Bearer …`.")
    name: str = Field(description="The label given with --name.")
    webhook_secret: str = Field(
        description="`whsec_…`: verifies the signatures of this key's webhooks."
    )


class WebhookSecretRotated(BaseModel):
    """`imageforge keys rotate-webhook-secret KEY_ID --json`."""

    id: str = Field(description="The key's id.")
    webhook_secret: str = Field(description="The new `whsec_…` secret.")
    previous_valid_until: float = Field(
        description="Unix seconds until which the old secret keeps signing too."
    )


class KeyInfo(BaseModel):
    """One entry of `imageforge keys list --json` (never the secret)."""

    id: str = Field(description="The key's id.", examples=["key_3f9a0c1d2e4b5a69"])
    name: str = Field(description="The label given with --name.")
    hint: str = Field(description="First and last characters of the secret.")
    created_at: float = Field(description="Unix seconds.")
    revoked_at: float | None = Field(description="Unix seconds; null while active.")
    active: bool = Field(description="Not revoked.")
    balance: float | None = Field(description="Credits left; null means unlimited.")
    admin: bool = Field(description="May call the admin API.")
    task_api: bool = Field(description="May create and read tasks.")


# Builders --------------------------------------------------------------------------


def task_created_body(task: Task, *, replayed: bool) -> dict[str, Any]:
    """`TaskCreated`."""
    return {
        "id": task.id,
        "object": "image",
        "created": task.created,
        "model": task.model,
        # A replay answers exactly what the first request was told (the poll tells the rest).
        "status": "queued" if replayed else task.status.value,
        "error": None,
        "amount": to_json_number(task.price_micros),
        "refunded": False,
    }


def task_result_body(task: Task, *, image_url: str | None, expired: bool) -> dict[str, Any]:
    """`TaskResult`; `image_url` is the link to a completed task's image, `expired` says
    that image is past retention (see `retention.Retention.image_expired`)."""
    status = task.status
    completed = status is TaskStatus.COMPLETED
    return {
        "id": task.id,
        "object": "image.generation",
        "created": task.created,
        "model": task.model,
        "status": status.value,
        "image_url": image_url if completed and not expired else None,
        "error": task.error if status is TaskStatus.FAILED else None,
        "amount": to_json_number(task.cost_micros),
        "refunded": task.refunded,
        "expired": completed and expired,
        "progress": task.progress if status is not TaskStatus.FAILED else None,
    }


def task_list_body(tasks: Sequence[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """`TaskList`, from `task_result_body`s."""
    return {"object": "list", "data": list(tasks), "has_more": has_more}


def delivery_list_body(attempts: Sequence[WebhookAttempt]) -> dict[str, Any]:
    """`DeliveryList`."""
    return {
        "object": "list",
        "data": [
            {
                "attempt": attempt.attempt,
                "at": attempt.at,
                "status_code": attempt.status_code,
                "error": attempt.error,
                "next_attempt_at": attempt.next_attempt_at,
            }
            for attempt in attempts
        ],
    }


def quote_body(
    resolved: ResolvedRequest, *, tier: str, price_micros: int, currency: str
) -> dict[str, Any]:
    """`QuoteResponse`: what a create body resolves to and costs."""
    return {
        "object": "image.quote",
        "model": resolved.model,
        "size": f"{resolved.width}x{resolved.height}",
        "width": resolved.width,
        "height": resolved.height,
        "quality": resolved.quality,
        "resolution": resolved.resolution,
        "billing_tier": tier,
        "amount": to_json_number(price_micros),
        "currency": currency,
    }


def error_body(
    message: str, *, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """`ErrorResponse`."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _balance(balance_micros: int | None) -> float | None:
    return None if balance_micros is None else to_json_number(balance_micros)


def usage_body(key: ApiKeyRecord, currency: str, rows: Sequence[UsageRow]) -> dict[str, Any]:
    """`UsageResponse`: `GET /v1/usage` and `imageforge keys usage --json`."""
    return {
        "object": "usage",
        "key_id": key.id,
        "currency": currency,
        "balance": _balance(key.balance_micros),
        "spend": to_json_number(sum(row.spend_micros for row in rows)),
        "refunded": to_json_number(sum(row.refunded_micros for row in rows)),
        "tasks": sum(row.tasks for row in rows),
        "days": [
            {
                "day": row.day,
                "model": row.model,
                "tasks": row.tasks,
                "completed": row.completed,
                "failed": row.failed,
                "unfinished": row.unfinished,
                "spend": to_json_number(row.spend_micros),
                "refunded": to_json_number(row.refunded_micros),
                "refunds": row.refunds,
            }
            for row in rows
        ],
    }


def key_created_body(key: ApiKeyRecord, secret: str) -> dict[str, Any]:
    """`KeyCreated`."""
    return {"id": key.id, "key": secret, "name": key.name, "webhook_secret": key.webhook_secret}


def webhook_secret_rotated_body(
    key_id: str, secret: str, *, previous_valid_until: float
) -> dict[str, Any]:
    """`WebhookSecretRotated`."""
    return {"id": key_id, "webhook_secret": secret, "previous_valid_until": previous_valid_until}


def key_info_body(key: ApiKeyRecord) -> dict[str, Any]:
    """`KeyInfo`."""
    return {
        "id": key.id,
        "name": key.name,
        "hint": key.hint,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "active": key.is_active,
        "balance": _balance(key.balance_micros),
        "admin": key.admin,
        "task_api": key.task_api,
    }


# The admin API's bodies (documented in the README, not in the API document) ----------


def admin_task_body(task: Task) -> dict[str, Any]:
    """`GET /v1/admin/tasks/{id}`: an operator's view of any key's task."""
    return {
        "id": task.id,
        "key_id": task.key_id,
        "model": task.model,
        "engine": task.engine,
        "status": task.status.value,
        "prompt": task.prompt,
        "quality": task.quality,
        "width": task.width,
        "height": task.height,
        "image_urls": list(task.image_urls),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "worker_id": task.worker_id,
        "error": task.error,
        "error_code": task.error_code,
        "price": to_json_number(task.price_micros),
        "refunded": task.refunded,
        "upstream": task.upstream,
        "upstream_task_id": task.upstream_task_id,
        "has_image": task.image_key is not None,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
    }


def audit_entry_body(entry: AuditEntry) -> dict[str, Any]:
    """One entry of `GET /v1/admin/audit`."""
    return {
        "id": entry.id,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details,
        "request_id": entry.request_id,
    }
