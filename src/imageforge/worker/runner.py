"""The worker: claim queued tasks, run them, record the outcome.

Each claimed task holds a lease, renewed by a heartbeat. Every write a worker
makes carries the attempt number it claimed; when the lease was taken away (the
rescuer re-queued the task, a newer attempt owns it) the write matches no row,
and the worker abandons that task. Leases and retry delays are durations: the
store times them on its own clock (the database's, in distributed mode), so a
worker whose clock is off neither steals live tasks nor starves.

When tasks are claimed, generated and finished is `Slots`' business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from imageforge.engines import Engine, EngineError, GeneratedImage, GenerationRequest
from imageforge.engines.base import CLIENT_CANCELLED, UpstreamRef
from imageforge.ids import TaskId
from imageforge.observability.metrics import Metrics
from imageforge.observability.tracing import Tracing
from imageforge.references import ReferenceFetcher, ReferenceFetchError
from imageforge.references.stored import stored_key
from imageforge.storage import Storage
from imageforge.store import Store, StoreUnavailable
from imageforge.tasks import CANCELLED_CODE, CANCELLED_ERROR, Task, TaskStatus
from imageforge.worker.image_check import check_engine_image
from imageforge.worker.progress import ProgressReporter
from imageforge.worker.retry import retry_delay, retry_until_deadline
from imageforge.worker.slots import Slots

log = logging.getLogger(__name__)

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
#: Most tasks claimed in one round by default (`IMAGEFORGE_CLAIM_BATCH`; see `Slots`).
CLAIM_BATCH = 32


@dataclass(frozen=True)
class RunnerConfig:
    concurrency: int
    lease_seconds: float
    heartbeat_seconds: float
    poll_interval_seconds: float
    retry_base_seconds: float
    retry_max_seconds: float
    shutdown_grace_seconds: float
    claim_batch: int = CLAIM_BATCH
    #: A task's progress is written at most this often.
    progress_write_seconds: float = 0.5


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt failed (in words a client can show), and whether another may succeed."""

    message: str
    #: The task's `error_code` when this failure is its last.
    code: str
    retryable: bool
    #: The upstream's Retry-After, in seconds: the next attempt waits at least this long.
    retry_after: float | None = None


class LeaseLost(Exception):
    """Our claim on a task is gone; someone else decides its fate now."""


class _Recorded(Exception):
    """The attempt failed and its outcome is recorded: nothing more to do."""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def storage_key_for(task: Task, content_type: str) -> str:
    # The attempt is part of the key so that a stale attempt can never overwrite
    # the image of the attempt that completed the task.
    day = datetime.fromtimestamp(task.created_at, UTC).strftime("%Y/%m/%d")
    extension = _EXTENSIONS.get(content_type, "bin")
    return f"{day}/{task.id}-{task.attempt}.{extension}"


class Runner:
    def __init__(
        self,
        *,
        store: Store,
        storage: Storage,
        engines: Mapping[str, Engine],
        fetcher: ReferenceFetcher,
        config: RunnerConfig,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`clock`: this process's clock. The runner only measures durations with it
        (how long a write is retried through an outage); leases and schedules are the
        store's, so a clock that is off by any amount changes nothing."""
        self._store = store
        self._storage = storage
        self._engines = engines
        self._fetcher = fetcher
        self._config = config
        self._clock = clock
        self._metrics = metrics
        self._tracing = tracing
        self.worker_id = worker_id or new_worker_id()
        self._stopping = asyncio.Event()
        self._slots = Slots(config.concurrency, config.claim_batch, self._stopping)
        # Every task this runner holds, generating or finishing.
        self._running: dict[asyncio.Task[None], Task] = {}
        # Jobs cancelled because their lease was taken away (not because we stop).
        self._lost: set[asyncio.Task[None]] = set()
        # Jobs stopped because a client cancelled their task.
        self._cancelled: set[asyncio.Task[None]] = set()
        self._lease_keeper: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """A task was queued: look for work now instead of at the next poll."""
        self._slots.work_queued()

    def cancel(self, task_id: TaskId) -> bool:
        """A client cancelled this task: stop its engine call if this runner is generating
        it (→ True). One that is already storing its image completes instead."""
        for job, task in list(self._running.items()):
            if task.id == task_id and self._slots.is_generating(job) and not job.done():
                if job not in self._cancelled:
                    self._cancelled.add(job)
                    # The message tells engines a client asked (the relay then cancels
                    # upstream), not a lost lease or a shutdown (the work must go on).
                    job.cancel(CLIENT_CANCELLED)
                return True
        return False

    @property
    def in_flight(self) -> int:
        """Tasks being generated: what `concurrency` limits."""
        return self._slots.generating

    async def run(self) -> None:
        """Claim and run tasks until `stop()`; then drain."""
        if self._lease_keeper is None:
            self._lease_keeper = asyncio.create_task(self._keep_leases(), name="lease keeper")
        backoff = 0.0
        while not self._stopping.is_set():
            claimed: list[Task] = []
            limit = self._slots.start_claim()
            if limit:
                try:
                    claimed = await self._store.claim(
                        worker_id=self.worker_id,
                        limit=limit,
                        lease_seconds=self._config.lease_seconds,
                    )
                    backoff = 0.0
                except StoreUnavailable:
                    backoff = min(5.0, backoff * 2 or 0.1)
                    log.warning("database unavailable; worker retries in %.1fs", backoff)
                    self._slots.settle()  # not claiming while it backs off
                    await self._sleep(backoff)
                    continue
                if claimed:
                    self._observe_claims(claimed)
                for task in claimed:
                    job = asyncio.create_task(self._execute(task), name=f"run {task.id}")
                    self._running[job] = task
                    self._slots.occupy(job)
                    job.add_done_callback(self._finished)
            if claimed and self._slots.has_room:
                continue  # maybe more is waiting
            await self._slots.wait_for_work(self._config.poll_interval_seconds)

    def _observe_claims(self, claimed: list[Task]) -> None:
        """Time in queue: from when each task became due (created, or its retry's delay
        over) to its claim, on this process's clock against the store's (clamped at 0)."""
        now = time.time()
        for task in claimed:
            if self._metrics is not None:
                waited = max(0.0, now - max(task.run_after, task.created_at))
                self._metrics.queue_seconds.labels(task.model, task.engine).observe(waited)
            if self._tracing is not None:
                self._tracing.queue_span(task, claimed_at=now)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._running.pop(job, None)
        self._slots.free(job)
        if not job.cancelled() and job.exception() is not None:
            log.error("task runner crashed", exc_info=job.exception())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def stop(self) -> None:
        """Stop claiming; let running tasks finish within the grace period, then hand
        the rest back to the queue so another worker picks them up at once."""
        self._stopping.set()
        self._slots.settle()
        self._slots.nudge()
        if self._running:
            await asyncio.wait(list(self._running), timeout=self._config.shutdown_grace_seconds)
        leftovers = dict(self._running)
        for job in leftovers:
            job.cancel()
        if leftovers:
            await asyncio.wait(list(leftovers))
        if self._lease_keeper is not None:
            self._lease_keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_keeper
        for task in leftovers.values():
            with contextlib.suppress(Exception):
                if await self._store.release(task.id, task.attempt):
                    log.info("handed %s back to the queue", task.id)

    # One task ---------------------------------------------------------------

    async def _execute(self, task: Task) -> None:
        job = asyncio.current_task()
        assert job is not None
        if task.cancel_requested_at is not None:
            # Cancelled while an earlier attempt ran, which ended without failing it (a
            # retryable error, a rescue, a drain): it must not run again.
            await self._record_cancel(task)
            return
        try:
            await self._generate_and_store(task, job)
        except asyncio.CancelledError:
            if job in self._cancelled and not self._stopping.is_set():
                await self._record_cancel(task)
                return
            if job not in self._lost:
                raise
            log.warning("lost the lease on %s (attempt %d); abandoning it", task.id, task.attempt)
        except LeaseLost:
            log.warning("lost the lease on %s (attempt %d); abandoning it", task.id, task.attempt)
        except StoreUnavailable:
            # The outcome could not be recorded; the lease runs out and the rescuer
            # hands the task to another attempt.
            log.warning("database unavailable; leaving %s to the rescuer", task.id)
        finally:
            self._lost.discard(job)
            self._cancelled.discard(job)

    async def _record_cancel(self, task: Task) -> None:
        """Fail a task a client cancelled (refunded in the same transaction); fenced like
        every outcome, so a completion or a rescue that got in first wins."""
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()  # the cancellation was ours, and it is handled
        try:
            failed = await self._store.fail(
                task.id, task.attempt, error=CANCELLED_ERROR, error_code=CANCELLED_CODE
            )
        except StoreUnavailable:
            log.warning("database unavailable; %s stays for the rescuer", task.id)
            return
        log.info("cancelled %s%s", task.id, "" if failed else " (it had finished already)")

    async def _keep_leases(self) -> None:
        """Renew the leases of every task this runner holds, in one write per beat.

        A task whose lease was taken away (the rescuer re-queued it) is abandoned if it is
        still being generated; one that is finishing learns it from its own fenced write."""
        while True:
            await asyncio.sleep(self._config.heartbeat_seconds)
            held = list(self._running.items())
            if not held:
                continue
            try:
                report = await self._store.keep_leases(
                    [(task.id, task.attempt) for _, task in held],
                    lease_seconds=self._config.lease_seconds,
                )
            except StoreUnavailable:
                continue  # the leases may still be valid; try again at the next beat
            for job, task in held:
                if task.id not in report.renewed and self._slots.is_generating(job):
                    self._lost.add(job)
                    job.cancel()
                elif task.id in report.cancel_requested:
                    self.cancel(task.id)

    async def _generate_and_store(self, task: Task, job: asyncio.Task[None] | None) -> None:
        engine = self._engines.get(task.engine)
        progress = ProgressReporter(
            self._store, task, interval_seconds=self._config.progress_write_seconds
        )
        started = time.perf_counter()
        outcome = "error"
        span = (
            self._tracing.engine_span(task)
            if self._tracing is not None
            else contextlib.nullcontext()
        )
        try:
            with span:
                image = await self._generate(task, engine, progress)
            outcome = "ok"
        except _Recorded:
            return
        except LeaseLost:
            outcome = "lease_lost"
            raise
        finally:
            await progress.aclose()
            if self._metrics is not None:
                self._metrics.engine_seconds.labels(task.model, task.engine, outcome).observe(
                    time.perf_counter() - started
                )
        async with self._slots.finishing(job):
            await self._store_and_complete(task, image)

    async def _generate(
        self, task: Task, engine: Engine | None, progress: ProgressReporter
    ) -> GeneratedImage:
        """The engine's image, checked to decode (`image_check`); a failure is recorded and
        raised as `_Recorded`."""
        try:
            if engine is None:
                raise EngineError(
                    f"engine {task.engine!r} is not configured on this worker", retryable=False
                )
            if not engine.fetches_references and any(
                stored_key(url) is not None for url in task.image_urls
            ):
                # Such an engine hands the URLs to its upstream, which cannot read our storage.
                raise EngineError(
                    f"engine {task.engine!r} passes reference URLs on and cannot use "
                    "uploaded images; send image_urls to this model instead",
                    retryable=False,
                )
            references = (
                await self._fetcher.fetch_all(task.image_urls, fit=(task.width, task.height))
                if engine.fetches_references
                else []
            )
            image = await engine.generate(
                GenerationRequest(
                    prompt=task.prompt,
                    width=task.width,
                    height=task.height,
                    quality=task.quality,  # type: ignore[arg-type]
                    model=task.model,
                    references=tuple(references),
                    reference_urls=task.image_urls,
                    task_id=task.id,
                    resume=(
                        UpstreamRef(task.upstream, task.upstream_task_id)
                        if task.upstream and task.upstream_task_id
                        else None
                    ),
                    checkpoint=lambda ref: self._record_upstream(task, ref),
                    progress=progress.report,
                )
            )
            await check_engine_image(image)
        except LeaseLost:
            raise
        except ReferenceFetchError as exc:
            await self._record_failure(
                task, Failure(exc.message, "invalid_reference", exc.retryable)
            )
            raise _Recorded() from None
        except EngineError as exc:
            await self._record_failure(
                task, Failure(exc.message, exc.code, exc.retryable, exc.retry_after)
            )
            raise _Recorded() from None
        except Exception as exc:
            log.exception("unexpected error generating %s", task.id)
            failure = Failure(f"internal error: {type(exc).__name__}", "internal_error", True)
            await self._record_failure(task, failure)
            raise _Recorded() from None
        return image

    async def _store_and_complete(self, task: Task, image: GeneratedImage) -> None:
        key = storage_key_for(task, image.content_type)
        try:
            await self._storage.put(key, image.data, image.content_type)
        except OSError as exc:
            log.error("could not store the image of %s: %s", task.id, exc)
            failure = Failure("could not store the generated image", "storage_error", True)
            await self._record_failure(task, failure)
            return
        if not await self._complete_through_outage(task, key, image):
            await self._storage.delete(key)
            raise LeaseLost()
        log.info("completed %s (attempt %d)", task.id, task.attempt)
        if self._metrics is not None:
            self._metrics.tasks_completed.labels(task.model, task.engine).inc()

    async def _complete_through_outage(self, task: Task, key: str, image: GeneratedImage) -> bool:
        """complete(), retried with backoff while the database is unreachable.

        The image is paid for and stored; giving up would have the rescuer run the task
        again. Retrying is safe because the write is fenced by the attempt. A retry that
        matches no row may mean an earlier try committed before its connection died, so
        the row decides whether the image is the task's (keep it) or not ours (delete)."""
        completed, retries = await retry_until_deadline(
            lambda: self._store.complete(
                task.id,
                task.attempt,
                image_key=key,
                content_type=image.content_type,
                usage=image.usage or None,
                upstream=image.upstream,
            ),
            retry_on=StoreUnavailable,
            within_seconds=self._config.lease_seconds,
            keep_trying=lambda: not self._stopping.is_set(),
            on_retry=lambda delay: log.warning(
                "database unavailable; completing %s again in %.1fs", task.id, delay
            ),
            clock=self._clock,
        )
        if completed or not retries:
            return completed
        current = await self._store.get_task(task.id)
        return (
            current is not None
            and current.status is TaskStatus.COMPLETED
            and current.attempt == task.attempt
            and current.image_key == key
        )

    async def _record_upstream(self, task: Task, ref: UpstreamRef) -> None:
        # The upstream already accepted (and will bill) the work: losing its id to a
        # database hiccup would make the next attempt submit and pay again, so the save
        # is retried for up to a lease (it is fenced by the attempt, so retrying is safe).
        saved, _ = await retry_until_deadline(
            lambda: self._store.record_upstream(
                task.id, task.attempt, upstream=ref.upstream, upstream_task_id=ref.task_id
            ),
            retry_on=StoreUnavailable,
            within_seconds=self._config.lease_seconds,
            clock=self._clock,
        )
        if not saved:
            raise LeaseLost()

    async def _record_failure(self, task: Task, failure: Failure) -> None:
        if failure.retryable and task.attempt < task.max_attempts:
            delay = retry_delay(
                task.attempt,
                base_seconds=self._config.retry_base_seconds,
                max_seconds=self._config.retry_max_seconds,
                retry_after=failure.retry_after,
            )
            applied = await self._store.requeue(
                task.id,
                task.attempt,
                delay_seconds=delay,
                error=failure.message,
                error_code=failure.code,
            )
            log.info("retrying %s in %.1fs after: %s", task.id, delay, failure.message)
            if applied and self._metrics is not None:
                self._metrics.task_retries.labels(task.model, task.engine, failure.code).inc()
        else:
            message = failure.message
            if failure.retryable:
                message = f"generation failed after {task.attempt} attempts: {message}"
            applied = await self._store.fail(
                task.id, task.attempt, error=message, error_code=failure.code
            )
            log.info("failed %s: %s", task.id, message)
            if applied and self._metrics is not None:
                self._metrics.tasks_failed.labels(task.model, task.engine, failure.code).inc()
                if task.price_micros:
                    self._metrics.credits_refunded.labels(task.model).inc(task.price_micros)
        if not applied:
            raise LeaseLost()
