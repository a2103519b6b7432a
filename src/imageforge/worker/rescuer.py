"""The rescuer: tasks whose lease expired go back to the queue, or fail for good.

Safe to run in every process at once: each rescue is a conditional UPDATE
(still processing, lease still expired), so it can never overwrite a completion
that raced it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from imageforge.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


#: Idempotency keys are kept this long; pruning runs about once a minute.
PRUNE_EVERY_SECONDS = 60.0


async def rescue_forever(
    store: Store, *, interval_seconds: float, idempotency_ttl_seconds: float = 86_400
) -> None:
    next_prune = 0.0
    while True:
        try:
            now = time.time()
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY_SECONDS
                await store.prune_idempotency_keys(older_than=now - idempotency_ttl_seconds)
                # Request counters matter for their minute only.
                await store.prune_request_counts(older_than=int(now) - 300)
            report = await store.rescue_expired(now=now)
            if report.requeued:
                log.warning("re-queued %d task(s) with expired leases", len(report.requeued))
            if report.failed:
                log.warning("failed %d task(s) out of attempts", len(report.failed))
        except StoreUnavailable:
            log.warning("database unavailable; rescuer retries later")
        except Exception:
            log.exception("rescuer pass failed")
        await asyncio.sleep(interval_seconds)
