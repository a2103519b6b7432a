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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from imageforge.billing import InsufficientCredits, PriceBook
from imageforge.catalog import (
    ModelSpec,
    ResolvedRequest,
    check_callback_url,
    price_key,
    resolve_request,
)
from imageforge.errors import InvalidRequest, NotFound
from imageforge.events import TaskEvents
from imageforge.ids import TaskId, looks_like_task_id, new_task_id
from imageforge.observability.metrics import Metrics
from imageforge.references import AddressPolicy, OutboundError
from imageforge.references.outbound import check_url
from imageforge.retention import Retention
from imageforge.store import ApiKeyRecord, Store
from imageforge.store.base import CancelOutcome, IdempotencyClaim, UsageRow, WebhookAttempt
from imageforge.tasks import Task, TaskStatus
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
    """Same fields, same values → same hash, whatever the key order or ignored extras.
    (`callback_url` counts only when sent: bodies without it hash as they always did.)"""
    fields = body.model_dump(exclude={"callback_url"} if body.callback_url is None else None)
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


#: Longest `?wait=` of a long-poll, in seconds.
MAX_WAIT_SECONDS = 60
#: Tasks per page of `GET /v1/tasks`: the default and the most.
DEFAULT_PAGE = 20
MAX_PAGE = 100


def check_wait(raw: str | None) -> int | None:
    """`?wait=N` of a long-poll: None when absent, else an integer 1–60 (400 otherwise)."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_WAIT_SECONDS:
        raise InvalidRequest(
            f"wait: must be an integer number of seconds from 1 to {MAX_WAIT_SECONDS} "
            f"(got {raw[:40]!r})",
            param="wait",
            code="invalid_wait",
        )
    return int(raw)


def check_page_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(
            f"limit: must be an integer from 1 to {MAX_PAGE} (got {raw[:40]!r})",
            param="limit",
            code="invalid_limit",
        )
    return int(raw)


def check_status_filter(raw: str | None) -> str | None:
    if raw is None:
        return None
    if raw not in {status.value for status in TaskStatus}:
        raise InvalidRequest(
            f"status: must be one of queued, processing, completed, failed (got {raw[:40]!r})",
            param="status",
            code="invalid_status",
        )
    return raw


@dataclass(frozen=True)
class Page:
    tasks: list[Task]
    has_more: bool


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
        metrics: Metrics | None = None,
        events: TaskEvents | None = None,
        callback_policy: AddressPolicy | None = None,
    ) -> None:
        """`events`: what wakes long-polls and event streams (see events.py).
        `callback_policy`: where webhooks may go (checked on create, again when sent)."""
        self._store = store
        self._metrics = metrics
        self._models = models
        self._max_attempts = max_attempts
        self._prices = prices or PriceBook(currency="USD", prices={})
        self._idempotency_ttl = idempotency_ttl_seconds
        self._max_unfinished = max_unfinished_tasks
        self.on_task_queued = on_task_queued
        #: Terminal tasks by (owner key id, task id).
        self._terminal: dict[tuple[str, str], Task] = {}
        self._retention = retention or Retention()
        self.events = events or TaskEvents()
        self._callback_policy = callback_policy or AddressPolicy()
        #: Called with the id of a processing task a client asked to cancel (the runner in
        #: this process stops it at once; others see the request at their next heartbeat).
        self.on_cancel_requested: Callable[[TaskId], object] = lambda _task_id: None

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
        base_url: str | None = None,
    ) -> tuple[Task, bool]:
        """Accept a task: validate, price, charge and insert in one transaction.
        → (task, replayed); replayed is True when an Idempotency-Key matched.

        `uploaded`: references stored for the client. `request_hash`: what identifies the
        request for the Idempotency-Key when `body` is only part of it (default: `body`'s
        fingerprint); a caller that passes it makes it cover `uploaded` too. `base_url`: the
        public URL the request came in on, for the webhook's image link."""
        quote = self.quote(body, uploaded=uploaded)
        resolved = quote.resolved
        callback_url = None
        if body.callback_url is not None:
            callback_url = await self.check_callback(body.callback_url)
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
            callback_url=callback_url,
            callback_base_url=base_url,
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
            if self._metrics is not None:
                self._metrics.tasks_created.labels(stored.model, stored.engine).inc()
                if stored.price_micros:
                    self._metrics.credits_charged.labels(stored.model).inc(stored.price_micros)
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

    async def check_callback(self, url: str) -> str:
        """A webhook URL a client may give: its syntax, then every address its host resolves
        to through the outbound guard (the same policy and allow-list as references). The
        sender checks again and connects only to the address it checked."""
        check_callback_url(url)
        try:
            target = check_url(url)
            port = target.port or (443 if target.scheme == "https" else 80)
            await self._callback_policy.resolve(target.host, port)
        except OutboundError as exc:
            raise InvalidRequest(
                f"callback_url: {exc.reason}; only public addresses, or what "
                "IMAGEFORGE_REFERENCE_ALLOWLIST admits, may receive webhooks",
                param="callback_url",
                code="invalid_callback_url",
            ) from None
        return url

    # Lifecycle ----------------------------------------------------------------

    async def wait(self, owner: ApiKeyRecord, task_id: str, *, seconds: float) -> Task:
        """The task once terminal, or as it is after `seconds`. Waiting reads nothing:
        each change wakes it (`events`) and it reads the task once then."""
        deadline = time.monotonic() + seconds
        with self.events.subscribe(task_id) as changes:
            while True:
                task = await self.get(owner, task_id)
                left = deadline - time.monotonic()
                if task.status.is_terminal or left <= 0:
                    return task
                await changes.wait(left)

    async def follow(
        self, owner: ApiKeyRecord, task_id: str, *, keepalive_seconds: float
    ) -> AsyncIterator[Task | None]:
        """The task now, then again after every change, ending with it terminal; None
        after `keepalive_seconds` without a change (the task is read then too, in case a
        wake-up was lost, and yielded if it changed)."""
        with self.events.subscribe(task_id) as changes:
            last: Task | None = None
            while True:
                task = await self.get(owner, task_id)
                if last is None or _moved(last, task):
                    yield task
                    last = task
                if task.status.is_terminal:
                    return
                if not await changes.wait(keepalive_seconds):
                    yield None

    async def cancel(self, owner: ApiKeyRecord, task_id: str) -> Task:
        """Cancel the owner's task: a queued one fails now (refunded); a processing one is
        stopped by its worker; a finished one stays as it is. → the task as it is now."""
        task = await self.get(owner, task_id)
        if task.status.is_terminal:
            return task
        outcome = await self._store.cancel_task(task.id)
        if outcome is CancelOutcome.REQUESTED:
            self.on_cancel_requested(task.id)
        return await self.get(owner, task_id)

    async def list_tasks(
        self,
        owner: ApiKeyRecord,
        *,
        limit: int = DEFAULT_PAGE,
        after: str | None = None,
        status: str | None = None,
        model: str | None = None,
    ) -> Page:
        """The owner's tasks, newest first, after the task `after` (the last of the page
        before). Tasks past the task retention are left out, as `get` answers 404 for them."""
        if after is not None and not looks_like_task_id(after):
            raise _unknown_cursor(after)
        page = await self._store.list_tasks(
            owner.id,
            limit=limit,
            after=TaskId(after) if after is not None else None,
            status=status,
            model=model,
        )
        if page is None:
            raise _unknown_cursor(after or "")
        now = time.time()
        tasks = [
            task
            for task in page.tasks
            if self._retention.task_seconds is None or not self._retention.task_expired(task, now)
        ]
        return Page(tasks=tasks, has_more=page.has_more)

    async def deliveries(self, owner: ApiKeyRecord, task_id: str) -> list[WebhookAttempt]:
        task = await self.get(owner, task_id)
        return await self._store.webhook_attempts(task.id)


def _moved(before: Task, after: Task) -> bool:
    return (before.status, before.attempt, before.progress) != (
        after.status,
        after.attempt,
        after.progress,
    )


def _unknown_cursor(after: str) -> InvalidRequest:
    # One message for an unknown id and another key's: existence is never revealed.
    return InvalidRequest(
        f"after: no task of yours has the id {after[:100]!r}; pass the id of the last task "
        "of the previous page",
        param="after",
        code="invalid_cursor",
    )
