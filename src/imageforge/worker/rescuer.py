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

from imageforge.storage import Storage
from imageforge.store import Store, StoreUnavailable
from imageforge.worker.janitor import sweep_orphan_images

log = logging.getLogger(__name__)


#: Idempotency keys are kept this long; pruning runs about once a minute.
PRUNE_EVERY_SECONDS = 60.0


#: Orphaned images are looked for this often, and only among files at least this old (far
#: longer than any write takes, so no worker can still be writing them).
SWEEP_EVERY_SECONDS = 3600.0
ORPHAN_MIN_AGE_SECONDS = 3600.0


async def rescue_forever(
    store: Store,
    *,
    interval_seconds: float,
    idempotency_ttl_seconds: float = 86_400,
    storage: Storage | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    next_prune = 0.0
    next_sweep = clock() + SWEEP_EVERY_SECONDS
    while True:
        try:
            now = clock()
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY_SECONDS
                await store.prune_idempotency_keys(older_than=now - idempotency_ttl_seconds)
                # Request counters matter for their minute only.
                await store.prune_request_counts(older_than=int(now) - 300)
            if storage is not None and now >= next_sweep:
                next_sweep = now + SWEEP_EVERY_SECONDS
                await sweep_orphan_images(store, storage, min_age_seconds=ORPHAN_MIN_AGE_SECONDS)
            report = await store.rescue_expired()
            if report.requeued:
                log.warning("re-queued %d task(s) with expired leases", len(report.requeued))
            if report.failed:
                log.warning("failed %d task(s) out of attempts", len(report.failed))
        except StoreUnavailable:
            log.warning("database unavailable; rescuer retries later")
        except Exception:
            log.exception("rescuer pass failed")
        await asyncio.sleep(interval_seconds)
