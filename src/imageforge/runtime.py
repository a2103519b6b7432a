"""Everything a running process holds: store, storage, engines, services, worker.

Built from Settings once at start-up, torn down once at shutdown; the API's
lifespan and the `imageforge worker` command both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import math
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge.billing import PriceBook
from imageforge.catalog import ModelSpec, billing_tiers
from imageforge.engine_setup import build_engines, check_engines
from imageforge.engines import Engine
from imageforge.errors import ConfigurationError, configuring
from imageforge.events import TaskEvents
from imageforge.keyring import KeyRing
from imageforge.observability.metrics import QueueDepth, metrics
from imageforge.observability.metrics_server import MetricsServer
from imageforge.observability.request_tally import RequestTally
from imageforge.observability.tracing import Tracing, build_tracing, check_tracing
from imageforge.ratelimit import RequestRateLimiter, build_rate_limiter
from imageforge.references import AddressPolicy, FetchLimits, OutboundClient, ReferenceFetcher
from imageforge.retention import Retention
from imageforge.service import ImageService
from imageforge.settings import Settings
from imageforge.storage import LocalStorage, Storage, UrlSigner, load_or_create_secret
from imageforge.storage.probe import check_storage
from imageforge.store import Store, open_store, upgrade_database
from imageforge.store.base import AnnouncesChanges, WakesWorkers
from imageforge.store.migrate import head_revision
from imageforge.store.urls import database_backend
from imageforge.tasks import Task, TaskStatus
from imageforge.wire import task_result_body
from imageforge.worker.janitor import Janitor
from imageforge.worker.rescuer import rescue_forever
from imageforge.worker.runner import Runner, RunnerConfig
from imageforge.worker.webhooks import WebhookConfig, WebhookSender

if TYPE_CHECKING:
    from imageforge.storage.s3 import S3Options

log = logging.getLogger(__name__)

#: Young-generation collections every 20,000 allocations instead of 700. A collection's
#: cost is the objects that are still alive, and with hundreds of upstream calls in
#: flight most young objects are: at 500 calls the default ran ~250 collections per
#: 1,000 tasks (0.09 s of the loop), this runs 6 (0.05 s, ≤ 10 ms each).
GC_THRESHOLDS = (20_000, 20, 20)
OUTBOUND_USER_AGENT = "imageforge/0.1"

#: Builds the storage a runtime uses, given the signer of its /files links.
StorageFactory = Callable[[UrlSigner], Storage]


def tune_garbage_collector() -> None:
    """Process-wide: freeze what start-up allocated and collect young objects less often.

    Everything allocated so far lives as long as the process. Freezing it keeps full
    garbage collections from re-scanning it: unfrozen, they paused every request for
    30–55 ms about once a second under load, and a worker's loop for up to 120 ms. Only
    the command line asks for this (`Runtime.start(tune_gc=True)`); a program that
    embeds the app keeps its own GC settings.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _catalog(settings: Settings) -> tuple[Mapping[str, ModelSpec], PriceBook]:
    """The public models and their prices; a priced model must price every tier."""
    models = settings.model_specs()
    prices = settings.price_book()
    for spec in models.values():
        prices.check_covers(spec.name, billing_tiers(spec))
    return models, prices


def _check_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"{data_dir} cannot be written to ({exc.strerror or exc})",
            setting="data_dir",
            fix="point it at a directory this user may create files in",
        ) from None


def local_storage(settings: Settings) -> StorageFactory:
    """The default storage: files under `<data_dir>/images`."""
    return lambda signer: LocalStorage(
        settings.data_dir / "images", signer, write_threads=settings.storage_write_threads
    )


def s3_options(settings: Settings) -> S3Options:
    """The s3 backend's configuration, from the `s3_*` settings."""
    from imageforge.storage.s3 import S3Options

    assert settings.s3_bucket is not None  # Settings refuses storage = s3 without one
    return S3Options(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        path_style=settings.s3_path_style,
        links=settings.s3_links,
        public_base_url=settings.s3_public_base_url,
        multipart_threshold_bytes=settings.s3_multipart_threshold_bytes,
    )


def configured_storage(settings: Settings) -> tuple[StorageFactory, str]:
    """The backend `storage` names, and where it keeps images (for messages)."""
    if settings.storage != "s3":
        return local_storage(settings), str((settings.data_dir / "images").resolve())
    try:
        from imageforge.storage.s3 import S3Storage
    except ImportError as exc:
        raise ConfigurationError(
            f"storage = s3 needs the s3 extra ({exc.name} is missing)",
            setting="storage",
            fix="pip install 'imageforge[s3]'",
        ) from None
    options = s3_options(settings)

    def build(signer: UrlSigner) -> Storage:
        try:
            return S3Storage(options, signer)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    return build, options.location


def link_secret(settings: Settings) -> bytes:
    """The /files links' secret: configured (the same on every node), else the data dir's."""
    if settings.url_signing_secret is not None:
        return settings.url_signing_secret.get_secret_value().encode()
    return load_or_create_secret(settings.data_dir)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    storage: Storage
    #: Signs the /files links storages hand out, and checks them when they are followed.
    signer: UrlSigner
    keyring: KeyRing
    service: ImageService
    #: How long images and finished tasks are kept (decided when a task is read).
    retention: Retention = field(default_factory=Retention)
    engines: dict[str, Engine] = field(default_factory=dict)
    runner: Runner | None = None
    rate_limiter: RequestRateLimiter | None = None
    #: The guarded client for URLs clients chose: references (and callbacks, with `post`).
    outbound: OutboundClient | None = None
    fetcher: ReferenceFetcher | None = None
    #: Where images live, for messages (the readiness check's).
    storage_location: str = ""
    #: The migration the schema must be at to serve (`/readyz`).
    schema_head: str = ""
    #: Traces, when configured (observability/tracing.py).
    tracing: Tracing | None = None
    #: Tasks by status for /metrics, read when scraped.
    queue_depth: QueueDepth = field(init=False)
    #: The request metrics the app's observing middleware tallies (folded before a scrape).
    request_tally: RequestTally | None = None
    metrics_server: MetricsServer | None = None
    #: What wakes this process's long-polls and event streams.
    events: TaskEvents = field(default_factory=TaskEvents)
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue_depth = QueueDepth(self.store)

    async def prepare_scrape(self) -> None:
        """What a scrape of this process reads must be current: the request tally folded
        into the metrics, the queue depth read."""
        if self.request_tally is not None:
            self.request_tally.fold()
        await self.queue_depth.refresh()

    def task_body(self, task: Task, *, base_url: str, now: float) -> dict[str, Any]:
        """The object of `GET /v1/result/{id}` (also each event's data and each webhook's
        body): retention and the link decided now, from the task (so nothing cached
        outlives either), by the rule in `retention.py` and the storage."""
        expired = self.retention.image_expired(task, now)
        image_url = None
        if task.status is TaskStatus.COMPLETED and task.image_key is not None and not expired:
            image_url = self.storage.url_for(
                task.image_key,
                base_url=base_url,
                # Rounded up: a link lives at least its lifetime (it dies at the start of
                # second `expires`; `int(now)` gave one of a second's lifetime 0 to 1 s).
                expires=math.ceil(now) + self.settings.image_url_ttl_seconds,
            )
        return task_result_body(task, image_url=image_url, expired=expired)

    def _webhook_body(self, task: Task, base_url: str | None) -> dict[str, Any]:
        # The link is built on the configured public URL, else on the one the create came in
        # on (a worker has no request of its own to take it from).
        base = self.settings.public_base_url or base_url or "http://127.0.0.1"
        return self.task_body(task, base_url=base, now=time.time())

    @staticmethod
    def check(
        settings: Settings,
        *,
        run_worker: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Raise the ConfigurationError `start` would raise, without connecting to
        anything or starting anything: the database URL and its driver, the data dir,
        models and prices, the reference allow-list, the rate limiter's Redis, and (for a
        worker) every engine in use with its upstreams, keys and files."""
        with configuring("database_url", fix="or unset it for a SQLite file in the data dir"):
            backend = database_backend(settings.resolved_database_url)
        if backend == "postgresql" and importlib.util.find_spec("asyncpg") is None:
            raise ConfigurationError(
                "PostgreSQL needs the asyncpg driver, which is not installed",
                setting="database_url",
                fix="pip install 'imageforge[postgres]'",
            )
        _check_data_dir(settings.data_dir)
        _catalog(settings)
        with configuring("storage", fix="see the README's image storage section"):
            configured_storage(settings)
        with configuring("reference_allowlist", fix="list host names, IP addresses or CIDRs"):
            AddressPolicy(settings.reference_allowlist)
        if settings.redis_url and importlib.util.find_spec("redis") is None:
            raise ConfigurationError(
                "sharing rate-limit counters needs the redis package, which is not installed",
                setting="redis_url",
                fix="pip install 'imageforge[redis]', or unset it",
            )
        check_tracing(settings, environ)
        if run_worker:
            models = settings.model_specs()
            check_engines({spec.engine for spec in models.values()}, settings, environ=environ)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        run_api: bool = True,
        run_worker: bool = True,
        storage: StorageFactory | None = None,
        tune_gc: bool = False,
        tracing: Tracing | None = None,
        serve_metrics: bool = True,
    ) -> Runtime:
        """Everything the process runs, started. `storage` replaces the local-disk
        default; `tune_gc` is for the command line only (see `tune_garbage_collector`);
        `serve_metrics`: serve `metrics_port` when it is set (not in the processes of a
        supervisor, which serves it for all of them).

        Safe to cancel (a SIGTERM during start-up): whatever was opened is closed again,
        and a worker that had begun claiming drains as `stop` does."""
        models, prices = _catalog(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(upgrade_database, settings.resolved_database_url)
        # Before anything is opened: a stop while it is read leaves nothing to close.
        schema_head = await asyncio.to_thread(head_revision)
        store = await open_store(
            settings.resolved_database_url, pool_size=settings.postgres_pool_size
        )
        signer = UrlSigner(link_secret(settings))
        if storage is None:
            storage, location = configured_storage(settings)
        else:
            location = "given to Runtime.start"
        try:
            images = storage(signer)
        except BaseException:
            await store.close()
            raise
        try:
            await check_storage(images, location=location)
        except BaseException:
            await images.aclose()
            await store.close()
            raise
        keyring = KeyRing(store)
        retention = Retention(
            image_seconds=settings.image_retention_seconds,
            task_seconds=settings.task_retention_seconds,
        )
        events = TaskEvents()
        store.watch_changes(events.notify)
        service = ImageService(
            store,
            models,
            max_attempts=settings.max_attempts,
            prices=prices,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            max_unfinished_tasks=settings.max_unfinished_tasks,
            retention=retention,
            metrics=metrics() if settings.metrics_enabled else None,
            events=events,
            callback_policy=AddressPolicy(settings.reference_allowlist),
        )
        runtime = cls(
            settings=settings,
            store=store,
            storage=images,
            signer=signer,
            keyring=keyring,
            service=service,
            retention=retention,
            storage_location=location,
            schema_head=schema_head,
            events=events,
        )
        try:
            runtime.tracing = tracing if tracing is not None else build_tracing(settings)
            await runtime._begin(run_api=run_api, run_worker=run_worker, tune_gc=tune_gc)
            if serve_metrics and settings.metrics_enabled and settings.metrics_port is not None:
                runtime._serve_metrics(settings.metrics_port)
        except BaseException:
            await runtime.stop()
            raise
        return runtime

    async def _begin(self, *, run_api: bool, run_worker: bool, tune_gc: bool) -> None:
        runtime, settings, store = self, self.settings, self.store
        if settings.rate_limit_per_minute is not None:
            runtime.rate_limiter = build_rate_limiter(
                settings.rate_limit_per_minute,
                store=store,
                # SQLite serves one node; PostgreSQL may serve many.
                shared_database=database_backend(settings.resolved_database_url) != "sqlite",
                redis_url=settings.redis_url,
            )
        if run_api:
            await runtime.keyring.refresh()
            runtime._spawn(runtime.keyring.watch(), "key watcher")
            shared = database_backend(settings.resolved_database_url) != "sqlite"
            # Changes committed by other processes: every node on PostgreSQL; on SQLite
            # only an API without a worker of its own (with one, every change of the
            # file's tasks is this process's and already announced in-process).
            if isinstance(store, AnnouncesChanges) and (shared or not run_worker):
                runtime._spawn(store.listen_for_task_changes(runtime.events.notify), "task changes")
        if run_worker:
            runtime._start_worker({spec.engine for spec in runtime.service.models.values()})
        if tune_gc:
            # After start-up's allocations: the tasks spawned above have not run yet, so
            # nothing short-lived is frozen.
            tune_garbage_collector()

    def _start_worker(self, engine_names: set[str]) -> None:
        settings = self.settings
        self.engines = build_engines(engine_names, settings)
        self.outbound = OutboundClient(
            AddressPolicy(settings.reference_allowlist), user_agent=OUTBOUND_USER_AGENT
        )
        self.fetcher = ReferenceFetcher(
            client=self.outbound,
            storage=self.storage,
            limits=FetchLimits(
                max_bytes=settings.reference_max_bytes,
                max_pixels=settings.reference_max_pixels,
                max_decoding_pixels=settings.reference_decoding_max_pixels,
                total_timeout_s=settings.reference_timeout_seconds,
            ),
        )
        self.runner = Runner(
            store=self.store,
            storage=self.storage,
            engines=self.engines,
            fetcher=self.fetcher,
            config=RunnerConfig(
                concurrency=settings.worker_concurrency,
                lease_seconds=settings.lease_seconds,
                heartbeat_seconds=settings.heartbeat_seconds,
                poll_interval_seconds=settings.poll_interval_seconds,
                retry_base_seconds=settings.retry_base_seconds,
                retry_max_seconds=settings.retry_max_seconds,
                shutdown_grace_seconds=settings.shutdown_grace_seconds,
                claim_batch=settings.claim_batch,
                progress_write_seconds=settings.progress_write_seconds,
            ),
            metrics=metrics() if settings.metrics_enabled else None,
            tracing=self.tracing,
        )
        # Tasks created in this process wake this process's worker at once, and a cancel
        # asked of this process stops the task at once if this worker runs it.
        self.service.on_task_queued = self.runner.wake
        self.service.on_cancel_requested = self.runner.cancel
        self._spawn(
            WebhookSender(
                store=self.store,
                outbound=self.outbound,
                body_of=self._webhook_body,
                config=WebhookConfig(
                    retry_schedule=tuple(settings.webhook_retry_schedule),
                    timeout_seconds=settings.webhook_timeout_seconds,
                    poll_seconds=settings.webhook_poll_seconds,
                ),
            ).run(),
            "webhooks",
        )
        if isinstance(self.store, WakesWorkers):
            # Tasks created on other nodes (or re-queued by their rescuers) wake this
            # worker through the database; the runner's poll covers lost wake-ups.
            self._spawn(self.store.listen_for_queued_tasks(self.runner.wake), "task wake-ups")
        self._spawn(self.runner.run(), "worker")
        self._spawn(
            rescue_forever(
                self.store,
                interval_seconds=settings.rescue_interval_seconds,
                metrics=metrics() if settings.metrics_enabled else None,
                idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
                janitor=Janitor(
                    store=self.store,
                    storage=self.storage,
                    retention=self.retention,
                    holder=self.runner.worker_id,
                    interval_seconds=settings.janitor_interval_seconds,
                    orphan_grace_seconds=settings.orphan_grace_seconds,
                    upload_retention_seconds=settings.upload_retention_seconds,
                ),
            ),
            "rescuer",
        )

    def _serve_metrics(self, port: int) -> None:
        token = self.settings.metrics_token
        try:
            self.metrics_server = MetricsServer(
                self.settings.metrics_host,
                port,
                token=token.get_secret_value() if token is not None else None,
                collectors=(self.queue_depth,),
                refresh=self.prepare_scrape,
                loop=asyncio.get_running_loop(),
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {self.settings.metrics_host}:{port} ({exc.strerror or exc})",
                setting="metrics_port",
                fix="choose a free port, or unset it to serve /metrics on the API's port",
            ) from None
        self.metrics_server.start()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background.append(task)

    async def stop(self) -> None:
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        if self.runner is not None:
            await self.runner.stop()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                await engine.aclose()
        if self.fetcher is not None:
            await self.fetcher.aclose()
        if self.outbound is not None:
            await self.outbound.aclose()
        if self.rate_limiter is not None:
            await self.rate_limiter.aclose()
        await self.storage.aclose()
        await self.store.close()
        if self.tracing is not None:
            self.tracing.shutdown()
