"""Row ↔ record mapping shared by every store: one column list, one reader per table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from imageforge.ids import KeyId, TaskId
from imageforge.store.base import ApiKeyRecord, LedgerEntry, UsageRow
from imageforge.tasks import Task, TaskStatus

TASK_COLUMNS = (
    "id, key_id, model, engine, prompt, quality, width, height, ratio, resolution, image_urls, "
    "status, attempt, max_attempts, run_after, lease_expires_at, worker_id, image_key, "
    "content_type, error, error_code, usage, price_micros, upstream, upstream_task_id, created_at, "
    "updated_at, started_at, finished_at"
)
KEY_COLUMNS = "id, name, hint, created_at, revoked_at, balance_micros"


def task_from_row(row: Sequence[Any]) -> Task:
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
    )


def key_from_row(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=KeyId(row[0]),
        name=row[1],
        hint=row[2],
        created_at=row[3],
        revoked_at=row[4],
        balance_micros=row[5],
    )


LEDGER_COLUMNS = "key_id, task_id, kind, amount_micros, model, created_at"


def ledger_entry_from_row(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(
        key_id=KeyId(row[0]),
        task_id=TaskId(row[1]) if row[1] else None,
        kind=row[2],
        amount_micros=row[3],
        model=row[4],
        created_at=row[5],
    )


def usage_rows(counts: Iterable[Sequence[Any]], spend: Iterable[Sequence[Any]]) -> list[UsageRow]:
    """Join per-(day, model) task counts with ledger spend, oldest day first.

    `counts` rows: day, model, tasks, completed, failed, unfinished;
    `spend` rows: day, model, spend in micro-units."""
    spent = {(row[0], row[1]): row[2] for row in spend}
    return sorted(
        (
            UsageRow(
                day=day,
                model=model,
                tasks=total,
                completed=completed,
                failed=failed,
                unfinished=unfinished,
                spend_micros=spent.get((day, model), 0),
            )
            for day, model, total, completed, failed, unfinished in counts
        ),
        key=lambda row: (row.day, row.model),
    )
