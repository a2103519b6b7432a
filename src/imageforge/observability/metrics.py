"""Prometheus metrics: what every process counts, and the text a scrape reads.

The metrics are built on first use (`metrics()`), not at import: prometheus-client decides
when it is first imported whether values live in this process's memory or in files shared
by several processes (`PROMETHEUS_MULTIPROC_DIR`), and `multiprocess.prepare` must have
decided that first. With several processes (`worker --processes`), each writes its own
files and a scrape sums them (`exposition`), so two processes' counters add up.

Queue depth is not counted: it is read from the store when scraped (`QueueDepth`, one
`GROUP BY status` query, cached a second so that several scrapers cost one query).

Label values are bounded: routes are templates (`/v1/result/{task_id}`, or `unmatched`),
methods outside the standard ones are `other`, models and engines come from the
configuration, error classes from the engines' codes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from imageforge.observability.multiprocess import MULTIPROC_ENV
from imageforge.tasks import TaskStatus

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from imageforge.store import Store

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Request latencies: the poll is answered in a millisecond or two, a create in a few.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Time in queue and in the engine: from instant to minutes (a 4K render on a CPU).
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: `imageforge_upstream_circuit_state`: the breaker's state as a number.
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
QUEUE_DEPTH_TTL_SECONDS = 1.0


class Metrics:
    """Every metric imageforge exports; one instance per process (`metrics()`)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "imageforge_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
        )
        self.request_seconds = Histogram(
            "imageforge_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
        )
        self.tasks_created = Counter(
            "imageforge_tasks_created", "Tasks accepted (charged and queued).", ["model", "engine"]
        )
        self.tasks_completed = Counter(
            "imageforge_tasks_completed", "Tasks completed with an image.", ["model", "engine"]
        )
        self.tasks_failed = Counter(
            "imageforge_tasks_failed",
            "Tasks failed for good (and refunded), by error code.",
            ["model", "engine", "code"],
        )
        self.task_retries = Counter(
            "imageforge_task_retries",
            "Attempts that failed and were queued again, by error code.",
            ["model", "engine", "code"],
        )
        self.task_rescues = Counter(
            "imageforge_task_rescues",
            "Tasks whose lease expired (their worker stopped responding), by what the "
            "rescuer did: requeued, or failed after the last attempt.",
            ["outcome"],
        )
        self.queue_seconds = Histogram(
            "imageforge_task_queue_seconds",
            "Time a task waited while claimable, from when it became due to its claim.",
            ["model", "engine"],
            buckets=TASK_BUCKETS,
        )
        self.engine_seconds = Histogram(
            "imageforge_engine_seconds",
            "Time of one engine call (references fetched and image generated), by outcome.",
            ["model", "engine", "outcome"],
            buckets=TASK_BUCKETS,
        )
        self.upstream_errors = Counter(
            "imageforge_upstream_errors",
            "Failed calls to an upstream, by error class (the engine's error code).",
            ["upstream", "error_class"],
        )
        self.breaker_state = Gauge(
            "imageforge_upstream_circuit_state",
            "Circuit breaker of an upstream: 0 closed, 1 half-open, 2 open (the worst of "
            "the live processes).",
            ["upstream"],
            multiprocess_mode="livemax",
        )
        self.credits_charged = Counter(
            "imageforge_credits_charged_micros",
            "Credits charged for accepted tasks, in micro-units of the currency.",
            ["model"],
        )
        self.credits_refunded = Counter(
            "imageforge_credits_refunded_micros",
            "Credits refunded for failed tasks, in micro-units of the currency.",
            ["model"],
        )
        #: For the webhooks: one increment per delivery attempt, by outcome
        #: (`delivered`, `failed`, `retrying`, `gave_up`).
        self.webhook_deliveries = Counter(
            "imageforge_webhook_deliveries",
            "Webhook delivery attempts, by outcome.",
            ["outcome"],
        )


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, built on first use."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition(*extra: Any) -> bytes:
    """The scrape's text: this process's metrics, or with several processes the sum of
    all of theirs; then the `extra` collectors (read at scrape time)."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    metrics()  # so that every family is listed, even before anything counted
    if multiprocess_mode():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if extra:
        registry = CollectorRegistry(auto_describe=False)
        for collector in extra:
            registry.register(collector)
        body += generate_latest(registry)
    return body


class QueueDepth:
    """Tasks by status, read from the store at scrape time and cached a second."""

    def __init__(self, store: Store, *, ttl_seconds: float = QUEUE_DEPTH_TTL_SECONDS) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._counts: dict[str, int] | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the counts unless read within the TTL; a store that cannot answer leaves
        the metric out of this scrape (the rest is still worth scraping)."""
        async with self._lock:
            if time.monotonic() - self._read_at < self._ttl:
                return
            try:
                self._counts = await self._store.count_tasks_by_status()
            except Exception as exc:
                log.warning("queue depth not read for /metrics: %s", exc)
                self._counts = None
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        if self._counts is None:
            return
        family = GaugeMetricFamily(
            "imageforge_queue_depth", "Tasks in the database by status.", labels=["status"]
        )
        for status in TaskStatus:
            family.add_metric([status.value], self._counts.get(status.value, 0))
        yield family
