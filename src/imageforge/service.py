"""The use cases behind the API: create a task, read a task.

Knows nothing of HTTP. Terminal tasks never change, so they are cached in memory:
the poll endpoint is the hottest path and most polls of a finished task then
never touch the database. The cache is keyed by owner and id, so another key's
task is a cache miss and a store read, exactly like an id nobody has: answered
from memory, it was told apart from an unknown id by its speed. Retention is decided
on every read, cached or not.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from imageforge.billing import InsufficientCredits, PriceBook
from imageforge.catalog import ModelSpec, ResolvedRequest, price_key, resolve_request
from imageforge.errors import InvalidRequest, NotFound
from imageforge.ids import TaskId, looks_like_task_id, new_task_id
from imageforge.retention import Retention
from imageforge.store import ApiKeyRecord, Store
from imageforge.store.base import IdempotencyClaim, UsageRow
from imageforge.tasks import Task
from imageforge.wire import CreateImageRequest

_MAX_CACHED_TASKS = 50_000


def task_not_found(task_id: str) -> NotFound:
    # One message for "unknown" and "another key's": existence is never revealed.
    return NotFound(f"No task found with id '{task_id[:100]}'.", param="id", code="task_not_found")


MAX_IDEMPOTENCY_KEY_CHARS = 255


def check_idempotency_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_CHARS or not all(
        "!" <= char <= "~" for char in value
    ):
        raise InvalidRequest(
            "Idempotency-Key: must be 1 to 255 visible ASCII characters (e.g. a UUID)",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return value


def request_fingerprint(body: CreateImageRequest) -> str:
    """Same fields, same values → same hash, whatever the key order or ignored extras."""
    canonical = orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class Quote:
    resolved: ResolvedRequest
    tier: str
    price_micros: int
    currency: str


@dataclass(frozen=True)
class Usage:
    key: ApiKeyRecord
    currency: str
    rows: list[UsageRow]


class ImageService:
    def __init__(
        self,
        store: Store,
        models: Mapping[str, ModelSpec],
        *,
        max_attempts: int,
        prices: PriceBook | None = None,
        idempotency_ttl_seconds: float = 86_400,
        max_unfinished_tasks: int | None = None,
        on_task_queued: Callable[[], None] = lambda: None,
        retention: Retention | None = None,
    ) -> None:
        self._store = store
        self._models = models
        self._max_attempts = max_attempts
        self._prices = prices or PriceBook(currency="USD", prices={})
        self._idempotency_ttl = idempotency_ttl_seconds
        self._max_unfinished = max_unfinished_tasks
        self.on_task_queued = on_task_queued
        #: Terminal tasks by (owner key id, task id).
        self._terminal: dict[tuple[str, str], Task] = {}
        self._retention = retention or Retention()

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        return self._models

    @property
    def currency(self) -> str:
        return self._prices.currency

    def quote(self, body: CreateImageRequest, *, uploaded: Sequence[str] = ()) -> Quote:
        """Validate and price a request without creating or charging anything.
        `uploaded`: references stored for the client (see `catalog.resolve_request`)."""
        resolved = self._resolve(body, uploaded)
        tier = price_key(self._models[resolved.model], resolved)
        return Quote(
            resolved=resolved,
            tier=tier,
            price_micros=self._prices.price(resolved.model, tier),
            currency=self._prices.currency,
        )

    def _resolve(self, body: CreateImageRequest, uploaded: Sequence[str]) -> ResolvedRequest:
        return resolve_request(
            model=body.model,
            prompt=body.prompt,
            quality=body.quality,
            ratio=body.ratio,
            resolution=body.resolution,
            size=body.size,
            image_urls=body.image_urls,
            models=self._models,
            uploaded=uploaded,
        )

    async def create(
        self,
        owner: ApiKeyRecord,
        body: CreateImageRequest,
        *,
        idempotency_key: str | None = None,
        uploaded: Sequence[str] = (),
        request_hash: str | None = None,
    ) -> tuple[Task, bool]:
        """Accept a task: validate, price, charge and insert in one transaction.
        → (task, replayed); replayed is True when an Idempotency-Key matched.

        `uploaded`: references stored for the client. `request_hash`: what identifies the
        request for the Idempotency-Key when `body` is only part of it (default: `body`'s
        fingerprint); a caller that passes it makes it cover `uploaded` too."""
        quote = self.quote(body, uploaded=uploaded)
        resolved = quote.resolved
        claim = None
        if idempotency_key is not None:
            claim = IdempotencyClaim(
                key=check_idempotency_key(idempotency_key),
                request_hash=request_hash or request_fingerprint(body),
                ttl_seconds=self._idempotency_ttl,
            )
        now = time.time()
        task = Task.queued(
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
            max_attempts=self._max_attempts,
            price_micros=quote.price_micros,
            now=now,
        )
        try:
            stored, replayed = await self._store.insert_task(
                task, idempotency=claim, max_unfinished=self._max_unfinished
            )
        except InsufficientCredits as exc:
            raise InsufficientCredits(
                price=exc.price, balance=exc.balance, currency=self.currency
            ) from None
        if not replayed:
            self.on_task_queued()
        return stored, replayed

    async def usage(self, owner: ApiKeyRecord, *, days: int) -> Usage:
        key = await self._store.get_key(owner.id)
        if key is None:
            raise NotFound("no such key", code="key_not_found")
        rows = await self._store.usage(owner.id, since=time.time() - days * 86_400)
        return Usage(key=key, currency=self.currency, rows=rows)

    async def get(self, owner: ApiKeyRecord, task_id: str, *, now: float | None = None) -> Task:
        """The owner's task; NotFound for others', unknown ones and those past the task
        retention (decided here, on every read, so the cache cannot outlive it)."""
        task = self._terminal.get((owner.id, task_id))
        if task is None:
            if not looks_like_task_id(task_id):
                raise task_not_found(task_id)
            task = await self._store.get_task(TaskId(task_id))
            if task is None or task.key_id != owner.id:
                raise task_not_found(task_id)
            if task.status.is_terminal:
                if len(self._terminal) >= _MAX_CACHED_TASKS:
                    # Drop the oldest entry (dicts keep insertion order).
                    del self._terminal[next(iter(self._terminal))]
                self._terminal[(owner.id, task_id)] = task
        if self._retention.task_seconds is not None and self._retention.task_expired(
            task, time.time() if now is None else now
        ):
            self._terminal.pop((owner.id, task_id), None)
            raise task_not_found(task_id)
        return task
