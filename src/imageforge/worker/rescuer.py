"""The rescuer: tasks whose lease expired go back to the queue, or fail for good.

Safe to run in every process at once: each rescue is a conditional UPDATE
(still processing, lease still expired), so it can never overwrite a completion
that raced it. Which leases have expired is the store's clock's call (the
database's, in distributed mode); this loop's own clock only paces it and dates
what it prunes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from imageforge.observability.metrics import Metrics
from imageforge.store import Store, StoreUnavailable
from imageforge.store.base import RescueReport
from imageforge.worker.janitor import Janitor

log = logging.getLogger(__name__)


#: Idempotency keys are kept this long; pruning runs about once a minute.
PRUNE_EVERY_SECONDS = 60.0


async def _count_rescues(store: Store, report: RescueReport, metrics: Metrics) -> None:
    """Rescues by outcome; a task failed here was refunded (by the store, in the same
    transaction), so its failure and refund are counted as the worker's are."""
    if report.requeued:
        metrics.task_rescues.labels("requeued").inc(len(report.requeued))
    if not report.failed:
        return
    metrics.task_rescues.labels("failed").inc(len(report.failed))
    for task_id in report.failed:
        task = await store.get_task(task_id)
        if task is None:
            continue
        metrics.tasks_failed.labels(task.model, task.engine, task.error_code or "rescued").inc()
        if task.price_micros:
            metrics.credits_refunded.labels(task.model).inc(task.price_micros)


async def rescue_forever(
    store: Store,
    *,
    interval_seconds: float,
    idempotency_ttl_seconds: float = 86_400,
    janitor: Janitor | None = None,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
) -> None:
    """Rescue expired leases every `interval_seconds`; prune once a minute; let the
    janitor sweep every `janitor.interval_seconds` (when this node gets the round)."""
    next_prune = 0.0
    next_sweep = clock() + (janitor.interval_seconds if janitor else 0.0)
    while True:
        try:
            now = clock()
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY_SECONDS
                await store.prune_idempotency_keys(older_than=now - idempotency_ttl_seconds)
                # Request counters matter for their minute only.
                await store.prune_request_counts(older_than=int(now) - 300)
            if janitor is not None and now >= next_sweep:
                next_sweep = now + janitor.interval_seconds
                await janitor.sweep()
            report = await store.rescue_expired()
            if report.requeued:
                log.warning("re-queued %d task(s) with expired leases", len(report.requeued))
            if report.failed:
                log.warning("failed %d task(s) out of attempts", len(report.failed))
            if metrics is not None:
                await _count_rescues(store, report, metrics)
        except StoreUnavailable:
            log.warning("database unavailable; rescuer retries later")
        except Exception:
            log.exception("rescuer pass failed")
        await asyncio.sleep(interval_seconds)
