"""Row ↔ record mapping shared by every store: one column list, one codec per table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from imageforge.ids import KeyId, TaskId
from imageforge.store.base import ApiKeyRecord, AuditEntry, DueWebhook, UsageRow
from imageforge.tasks import Task, TaskStatus

#: Every column of `tasks`, in the order of `task_values` and `task_from_row`.
TASK_COLUMN_NAMES = (
    "id",
    "key_id",
    "model",
    "engine",
    "prompt",
    "quality",
    "width",
    "height",
    "ratio",
    "resolution",
    "image_urls",
    "status",
    "attempt",
    "max_attempts",
    "run_after",
    "lease_expires_at",
    "worker_id",
    "image_key",
    "content_type",
    "error",
    "error_code",
    "usage",
    "price_micros",
    "upstream",
    "upstream_task_id",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "progress",
    "cancel_requested_at",
    "callback",
)
TASK_COLUMNS = ", ".join(TASK_COLUMN_NAMES)
#: Where `run_after` stands in `task_values` (stores stamp it when a task is accepted).
RUN_AFTER = TASK_COLUMN_NAMES.index("run_after")
KEY_COLUMNS = "id, name, hint, created_at, revoked_at, balance_micros, admin, task_api"


def encode_usage(usage: dict[str, Any] | None) -> str | None:
    return orjson.dumps(usage).decode() if usage is not None else None


def encode_callback(task: Task) -> str | None:
    if task.callback_url is None:
        return None
    return orjson.dumps({"url": task.callback_url, "base_url": task.callback_base_url}).decode()


def decode_callback(value: str | None) -> tuple[str | None, str | None]:
    """(url, base_url) of a `callback` column."""
    if not value:
        return None, None
    decoded = orjson.loads(value)
    return decoded["url"], decoded.get("base_url")


def task_values(task: Task) -> list[Any]:
    """The task as column values, in `TASK_COLUMN_NAMES` order."""
    return [
        task.id,
        task.key_id,
        task.model,
        task.engine,
        task.prompt,
        task.quality,
        task.width,
        task.height,
        task.ratio,
        task.resolution,
        orjson.dumps(list(task.image_urls)).decode(),
        task.status.value,
        task.attempt,
        task.max_attempts,
        task.run_after,
        task.lease_expires_at,
        task.worker_id,
        task.image_key,
        task.content_type,
        task.error,
        task.error_code,
        encode_usage(task.usage),
        task.price_micros,
        task.upstream,
        task.upstream_task_id,
        task.created_at,
        task.updated_at,
        task.started_at,
        task.finished_at,
        task.progress,
        task.cancel_requested_at,
        encode_callback(task),
    ]


def task_from_row(row: Sequence[Any]) -> Task:
    callback_url, callback_base_url = decode_callback(row[31])
    return Task(
        id=TaskId(row[0]),
        key_id=KeyId(row[1]),
        model=row[2],
        engine=row[3],
        prompt=row[4],
        quality=row[5],
        width=row[6],
        height=row[7],
        ratio=row[8],
        resolution=row[9],
        image_urls=tuple(orjson.loads(row[10])),
        status=TaskStatus(row[11]),
        attempt=row[12],
        max_attempts=row[13],
        run_after=row[14],
        lease_expires_at=row[15],
        worker_id=row[16],
        image_key=row[17],
        content_type=row[18],
        error=row[19],
        error_code=row[20],
        usage=orjson.loads(row[21]) if row[21] else None,
        price_micros=row[22],
        upstream=row[23],
        upstream_task_id=row[24],
        created_at=row[25],
        updated_at=row[26],
        started_at=row[27],
        finished_at=row[28],
        progress=row[29],
        cancel_requested_at=row[30],
        callback_url=callback_url,
        callback_base_url=callback_base_url,
    )


def key_from_row(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=KeyId(row[0]),
        name=row[1],
        hint=row[2],
        created_at=row[3],
        revoked_at=row[4],
        balance_micros=row[5],
        admin=bool(row[6]),
        task_api=bool(row[7]),
    )


def audit_from_row(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(
        id=int(row[0]),
        at=row[1],
        actor=row[2],
        action=row[3],
        target=row[4],
        details=orjson.loads(row[5]),
        request_id=row[6],
    )


def usage_rows(counts: Iterable[Sequence[Any]], spend: Iterable[Sequence[Any]]) -> list[UsageRow]:
    """Join per-(day, model) task counts with ledger spend, oldest day first. A day and
    model with spend but no task left (retention deleted the rows) keeps its spend.

    `counts` rows: day, model, tasks, completed, failed, unfinished;
    `spend` rows: day, model, spend in micro-units, refunded micro-units, refunds."""
    spent = {(row[0], row[1]): row[2:] for row in spend}
    counted = {(row[0], row[1]): row[2:] for row in counts}
    return [
        UsageRow(
            day=day,
            model=model,
            tasks=total,
            completed=completed,
            failed=failed,
            unfinished=unfinished,
            spend_micros=spend_micros,
            refunded_micros=refunded_micros,
            refunds=refunds,
        )
        for (day, model) in sorted(counted.keys() | spent.keys())
        for total, completed, failed, unfinished in [counted.get((day, model), (0, 0, 0, 0))]
        for spend_micros, refunded_micros, refunds in [spent.get((day, model), (0, 0, 0))]
    ]


def due_webhook_from_row(row: Sequence[Any]) -> DueWebhook:
    """From (task_id, key_id, callback, attempts)."""
    url, base_url = decode_callback(row[2])
    assert url is not None, "an outbox row always has a callback"
    return DueWebhook(
        task_id=TaskId(row[0]), key_id=KeyId(row[1]), url=url, base_url=base_url, attempts=row[3]
    )
