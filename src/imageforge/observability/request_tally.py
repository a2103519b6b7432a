"""Request counts and latencies, tallied in plain dictionaries and added to the Prometheus
metrics in batches.

prometheus-client's counter and histogram take a lock and walk the buckets in Python on
every observation: about 3 µs a request, several percent of a poll. The observing
middleware adds to two dictionaries instead (one `bisect` for the bucket), on the event
loop, and the sums go into the real metrics (in memory, or the multi-process files) by
`fold`: at most `delay` seconds after the first request not yet folded, and before every
scrape this process answers, so a scrape of this process is exact and a scrape of several
(`serve --processes`) is at most a second behind.

Everything runs on the event loop's thread: the tally is never read while it is added to.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any

from imageforge.observability.metrics import REQUEST_BUCKETS, Metrics

#: Seconds between the first request not yet folded and the fold.
FOLD_DELAY_SECONDS = 1.0


class RequestTally:
    def __init__(self, metrics: Metrics, *, delay: float = FOLD_DELAY_SECONDS) -> None:
        self._metrics = metrics
        self._delay = delay
        self._bounds = REQUEST_BUCKETS
        #: (route, method, status) → requests.
        self._counts: dict[tuple[str, str, int], int] = {}
        #: (route, method) → [seconds, requests in bucket 0, …, in +Inf].
        self._latencies: dict[tuple[str, str], list[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        row = self._latencies.get((route, method))
        if row is None:
            row = self._latencies[(route, method)] = [0.0] + [0] * (len(self._bounds) + 1)
        row[0] += seconds
        # Prometheus's buckets hold what is <= their bound: the first bound >= seconds.
        row[bisect_left(self._bounds, seconds) + 1] += 1
        if self._timer is None or self._timer_loop.is_closed():  # type: ignore[union-attr]
            loop = self._timer_loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._delay, self.fold)

    def fold(self) -> None:
        """Add what was tallied to the metrics, and start again from nothing."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        latencies, self._latencies = self._latencies, {}
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
