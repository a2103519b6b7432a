"""Request counts and latencies, added to the Prometheus metrics in batches.

prometheus-client's counter and histogram take a lock and walk the buckets in Python on
every observation: about 3 µs a request, several percent of a poll. The observing
middleware hands each request's record (`records.py`, the one the request log reads too)
to `record`, which only keeps it; `fold` counts what was kept (requests by route, method
and status; per route and method the seconds and a count per bucket, one `bisect` each)
and adds the sums to the real metrics (in memory, or the multi-process files). It folds
when `batch` records wait, `delay` seconds after the first one not yet folded, and before
every scrape this process answers, so a scrape of this process is exact and one of
several (`serve --processes`) is at most a second behind.

Everything runs on the event loop's thread: what is kept is never read while it grows.
"""

from __future__ import annotations

from asyncio import TimerHandle, get_running_loop
from bisect import bisect_left
from typing import Any

from imageforge.observability.metrics import REQUEST_BUCKETS, Metrics
from imageforge.observability.records import RequestRecord

#: Seconds between the first request not yet folded and the fold.
FOLD_DELAY_SECONDS = 1.0
#: Records kept at most before a fold (a fold of this many takes about a millisecond).
FOLD_BATCH = 2048


class RequestTally:
    def __init__(
        self, metrics: Metrics, *, delay: float = FOLD_DELAY_SECONDS, batch: int = FOLD_BATCH
    ) -> None:
        self._metrics = metrics
        self._delay = delay
        self._batch = batch
        self._records: list[RequestRecord] = []
        self._timer: TimerHandle | None = None

    def record(self, record: RequestRecord) -> None:
        records = self._records
        records.append(record)
        kept = len(records)
        if kept == 1:  # the first since the last fold: fold at most `delay` from now
            self._timer = get_running_loop().call_later(self._delay, self.fold)
        elif kept >= self._batch:
            self.fold()

    def fold(self) -> None:
        """Add what was kept to the metrics, and start again from nothing."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records, self._records = self._records, []
        if not records:
            return
        bounds = REQUEST_BUCKETS
        counts: dict[tuple[str, str, int], int] = {}
        #: (route, method) → [seconds, requests in bucket 0, …, in +Inf].
        latencies: dict[tuple[str, str], list[Any]] = {}
        for _, method, route, status, seconds, *_rest in records:
            key = (route, method, status)
            counts[key] = counts.get(key, 0) + 1
            row = latencies.get((route, method))
            if row is None:
                row = latencies[(route, method)] = [0.0] + [0] * (len(bounds) + 1)
            row[0] += seconds
            # Prometheus's buckets hold what is <= their bound: the first bound >= seconds.
            row[bisect_left(bounds, seconds) + 1] += 1
        metrics = self._metrics
        for (route, method, status), count in counts.items():
            metrics.requests.labels(route, method, str(status)).inc(count)
        for (route, method), row in latencies.items():
            histogram = metrics.request_seconds.labels(route, method)
            # What `Histogram.observe` does once per observation, once per bucket: its
            # values are the sum and the per-bucket counts (cumulated when exposed). The
            # tests compare the exposition with observe()'s, so a library change shows.
            histogram._sum.inc(row[0])
            for bucket, requests in zip(histogram._buckets, row[1:], strict=True):
                if requests:
                    bucket.inc(requests)
