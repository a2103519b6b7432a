"""The FastAPI application: routes, error mapping and the runtime's lifespan."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from imageforge import __version__
from imageforge.api.body_guard import BodyGuardMiddleware
from imageforge.api.docs import install_offline_docs
from imageforge.api.errors import install_error_handlers
from imageforge.api.hot import HotRoutes
from imageforge.api.observe import ObserveMiddleware
from imageforge.api.openapi import install_openapi
from imageforge.api.routes import (
    admin,
    files,
    health,
    images,
    metrics,
    models,
    openai_images,
    results,
    tasks,
    usage,
)
from imageforge.api.routes.playground import install_playground
from imageforge.observability.logs import line_writer
from imageforge.observability.metrics import metrics as process_metrics
from imageforge.observability.request_log import LOGGER_NAME as REQUEST_LOGGER
from imageforge.observability.request_log import RequestLog
from imageforge.observability.request_tally import RequestTally
from imageforge.observability.tracing import Tracing, build_tracing
from imageforge.runtime import Runtime, StorageFactory
from imageforge.settings import Settings

DESCRIPTION = """\
The GPT Image 2 asynchronous task API: create a task with `POST /v1/image2/images`, get its id
at once, then poll `GET /v1/result/{id}` every few seconds until it is `completed` (with a
signed `image_url`) or `failed` (with an `error`).

Every API request carries `Authorization: Bearer <api key>`. Errors have an OpenAI-style body:
`{"error": {"message", "type", "param", "code"}}`.

The OpenAI Images API (`POST /v1/images/generations`, `POST /v1/images/edits`, `GET /v1/models`)
runs over the same queue, so the `openai` SDK works with `base_url` set to this server's `/v1`.
"""


#: FastAPI's own OpenTelemetry (0.14x and later) is off: the observing middleware makes the
#: request's span, line and metrics (`api/observe.py`), so FastAPI's would be a second set
#: wherever a global provider is configured, and its check for one costs every request
#: three environment reads (about 3 µs, 5 % of a poll). Older releases have no such option.
_WITHOUT_FRAMEWORK_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    storage: StorageFactory | None = None,
    tune_gc: bool = False,
    tracing: Tracing | None = None,
    serve_metrics: bool = True,
) -> FastAPI:
    """The ASGI app; its lifespan starts and stops the `Runtime` (see `Runtime.start`
    for `storage` and `tune_gc`). `tracing`: spans go there instead of where the settings
    say (tests). `serve_metrics`: serve `metrics_port` (not in one of `serve --processes N`,
    whose supervisor serves it for all)."""
    if tracing is None:
        tracing = build_tracing(settings)
    tally = RequestTally(process_metrics()) if settings.metrics_enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(
            settings,
            run_worker=run_worker,
            storage=storage,
            tune_gc=tune_gc,
            tracing=tracing,
            serve_metrics=serve_metrics,
        )
        app.state.runtime = runtime
        runtime.request_tally = tally
        try:
            yield
        finally:
            if tally is not None:
                tally.fold()  # the last second's requests, before the process goes
            await runtime.stop()

    app = FastAPI(
        title="imageforge",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served from the package instead of a CDN (api/docs.py).
        docs_url=None,
        redoc_url=None,
        **_WITHOUT_FRAMEWORK_TELEMETRY,
    )
    #: Unix seconds; what `GET /v1/models` gives as its models' `created`.
    app.state.started_at = int(time.time())
    # The innermost of the app's middleware: the body guard and the proxy headers still
    # apply to the hot routes, and so does any middleware added after these.
    app.add_middleware(HotRoutes)
    app.add_middleware(
        BodyGuardMiddleware,
        max_bytes=settings.max_body_bytes,
        idle_timeout=settings.body_timeout_seconds,
        larger_bodies={openai_images.EDITS: settings.max_upload_bytes},
    )
    # Here rather than in the server, so the setting holds under any ASGI server; the
    # scheme it passes on is what image links are built with.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    # Added last, so outermost: it sees every answer (and its time) of every route.
    app.add_middleware(
        ObserveMiddleware,
        request_log=(
            RequestLog(prompts=settings.log_prompts, writer=line_writer(REQUEST_LOGGER))
            if settings.access_log
            else None
        ),
        tally=tally,
        tracing=tracing,
        static_paths=lambda: frozenset(
            path for route in app.routes if "{" not in (path := getattr(route, "path", "{"))
        ),
    )
    install_error_handlers(app, unavailable_retry_after=settings.unavailable_retry_after_seconds)
    app.include_router(images.router)
    app.include_router(results.router)
    app.include_router(tasks.router)
    app.include_router(usage.router)
    app.include_router(openai_images.router)
    app.include_router(models.router)
    app.include_router(files.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    if settings.metrics_enabled and settings.metrics_port is None:
        app.include_router(metrics.router)
    install_offline_docs(app)
    install_playground(app)
    install_openapi(app, models=settings.model_specs())
    return app
