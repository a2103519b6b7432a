"""The SQLite store: the embedded default.

One connection per process, used from the event loop thread. Measured on a
2-core machine: a read through the driver costs 10–17 µs where an ORM session
costs ~1 ms, and one shared writer connection kept write p99 ≈ 55 ms where
several writer connections gave 340–920 ms tails. Statements here are short and
never await inside a transaction, so running them on the loop is the fast path.

Writers use BEGIN IMMEDIATE: a deferred read-then-write transaction fails with
"database is locked" at once, ignoring busy_timeout.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from imageforge.ids import KeyId, TaskId
from imageforge.store.base import ApiKeyRecord, RescueReport, StoreUnavailable
from imageforge.tasks import Task, TaskStatus

_TASK_COLUMNS = (
    "id, key_id, model, engine, prompt, quality, width, height, ratio, resolution, image_urls, "
    "status, attempt, max_attempts, run_after, lease_expires_at, worker_id, image_key, "
    "content_type, error, error_code, usage, upstream, upstream_task_id, created_at, updated_at, "
    "started_at, finished_at"
)
_KEY_COLUMNS = "id, name, hint, created_at, revoked_at"

RESCUE_ERROR = "the worker processing this task stopped responding (lease expired)"


def task_from_row(row: tuple[Any, ...]) -> Task:
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
        upstream=row[22],
        upstream_task_id=row[23],
        created_at=row[24],
        updated_at=row[25],
        started_at=row[26],
        finished_at=row[27],
    )


def _key_from_row(row: tuple[Any, ...]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=KeyId(row[0]), name=row[1], hint=row[2], created_at=row[3], revoked_at=row[4]
    )


def sqlite_path(database_url: str) -> Path:
    """The file behind a `sqlite[+driver]:///path` URL."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if not url.database or url.database == ":memory:":
        raise ValueError("imageforge needs a SQLite file, not an in-memory database")
    return Path(url.database)


class SqliteStore:
    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: the driver must not open transactions behind our back;
        # we issue BEGIN IMMEDIATE ourselves for every write.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # FULL: an accepted task survives power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable() from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Keys -------------------------------------------------------------------

    async def create_key(
        self, *, key_id: KeyId, name: str, key_hash: str, hint: str, now: float
    ) -> ApiKeyRecord:
        with self._write() as db:
            db.execute(
                "INSERT INTO api_keys (id, name, key_hash, hint, created_at) VALUES (?,?,?,?,?)",
                (key_id, name, key_hash, hint, now),
            )
        return ApiKeyRecord(id=key_id, name=name, hint=hint, created_at=now, revoked_at=None)

    async def list_keys(self) -> list[ApiKeyRecord]:
        with self._guard():
            rows = self._db.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ).fetchall()
        return [_key_from_row(row) for row in rows]

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._guard():
            row = self._db.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone()
        return _key_from_row(row) if row else None

    async def revoke_key(self, key_id: KeyId, *, now: float) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, key_id),
            )
        return cursor.rowcount == 1

    async def keys_fingerprint(self) -> tuple[int, int]:
        with self._guard():
            row = self._db.execute("SELECT count(*), count(revoked_at) FROM api_keys").fetchone()
        return int(row[0]), int(row[1])

    # Tasks ------------------------------------------------------------------

    async def insert_task(self, task: Task) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES ({','.join('?' * 28)})",
                (
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
                    orjson.dumps(task.usage).decode() if task.usage is not None else None,
                    task.upstream,
                    task.upstream_task_id,
                    task.created_at,
                    task.updated_at,
                    task.started_at,
                    task.finished_at,
                ),
            )

    async def get_task(self, task_id: TaskId) -> Task | None:
        with self._guard():
            row = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
        return task_from_row(row) if row else None

    async def claim(
        self, *, worker_id: str, limit: int, lease_seconds: float, now: float
    ) -> list[Task]:
        with self._write() as db:
            rows = db.execute(
                "UPDATE tasks SET status = 'processing', attempt = attempt + 1, "
                "lease_expires_at = ?, worker_id = ?, started_at = coalesce(started_at, ?), "
                "updated_at = ? "
                "WHERE id IN (SELECT id FROM tasks WHERE status = 'queued' AND run_after <= ? "
                "ORDER BY run_after, created_at LIMIT ?) "
                f"RETURNING {_TASK_COLUMNS}",
                (now + lease_seconds, worker_id, now, now, now, limit),
            ).fetchall()
        tasks = [task_from_row(row) for row in rows]
        tasks.sort(key=lambda task: (task.run_after, task.created_at))
        return tasks

    async def heartbeat(self, task_id: TaskId, attempt: int, *, lease_until: float) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET lease_expires_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (lease_until, task_id, attempt),
            )
        return cursor.rowcount == 1

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
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'completed', image_key = ?, content_type = ?, "
                "usage = ?, upstream = coalesce(?, upstream), error = NULL, error_code = NULL, "
                "lease_expires_at = NULL, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (
                    image_key,
                    content_type,
                    orjson.dumps(usage).decode() if usage is not None else None,
                    upstream,
                    now,
                    now,
                    task_id,
                    attempt,
                ),
            )
        return cursor.rowcount == 1

    async def record_upstream(
        self, task_id: TaskId, attempt: int, *, upstream: str, upstream_task_id: str, now: float
    ) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET upstream = ?, upstream_task_id = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (upstream, upstream_task_id, now, task_id, attempt),
            )
        return cursor.rowcount == 1

    async def fail(
        self, task_id: TaskId, attempt: int, *, error: str, error_code: str, now: float
    ) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'failed', error = ?, error_code = ?, "
                "lease_expires_at = NULL, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (error, error_code, now, now, task_id, attempt),
            )
        return cursor.rowcount == 1

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
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'queued', run_after = ?, error = ?, error_code = ?, "
                "lease_expires_at = NULL, worker_id = NULL, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (run_after, error, error_code, now, task_id, attempt),
            )
        return cursor.rowcount == 1

    async def release(self, task_id: TaskId, attempt: int, *, now: float) -> bool:
        # The attempt counter never goes down (it is the fencing token), so a
        # hand-back raises the budget instead of refunding the attempt.
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'queued', run_after = ?, "
                "max_attempts = max_attempts + 1, lease_expires_at = NULL, worker_id = NULL, "
                "updated_at = ? "
                "WHERE id = ? AND attempt = ? AND status = 'processing'",
                (now, now, task_id, attempt),
            )
        return cursor.rowcount == 1

    async def rescue_expired(self, *, now: float, limit: int = 500) -> RescueReport:
        with self._write() as db:
            requeued = db.execute(
                "UPDATE tasks SET status = 'queued', run_after = ?, error = ?, "
                "error_code = 'lease_expired', lease_expires_at = NULL, worker_id = NULL, "
                "updated_at = ? "
                "WHERE id IN (SELECT id FROM tasks WHERE status = 'processing' "
                "AND lease_expires_at < ? AND attempt < max_attempts LIMIT ?) "
                "AND status = 'processing' AND lease_expires_at < ? RETURNING id",
                (now, RESCUE_ERROR, now, now, limit, now),
            ).fetchall()
            failed = db.execute(
                "UPDATE tasks SET status = 'failed', "
                "error = 'generation did not finish after ' || attempt || ' attempts: ' || ?, "
                "error_code = 'lease_expired', lease_expires_at = NULL, finished_at = ?, "
                "updated_at = ? "
                "WHERE id IN (SELECT id FROM tasks WHERE status = 'processing' "
                "AND lease_expires_at < ? AND attempt >= max_attempts LIMIT ?) "
                "AND status = 'processing' AND lease_expires_at < ? RETURNING id",
                (RESCUE_ERROR, now, now, now, limit, now),
            ).fetchall()
        return RescueReport(
            requeued=tuple(TaskId(row[0]) for row in requeued),
            failed=tuple(TaskId(row[0]) for row in failed),
        )

    async def count_tasks_by_status(self) -> dict[str, int]:
        with self._guard():
            rows = self._db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    async def ping(self) -> None:
        with self._guard():
            self._db.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        self._db.close()
