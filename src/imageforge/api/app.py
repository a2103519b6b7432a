"""The FastAPI application: routes, error mapping and the runtime's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from imageforge import __version__
from imageforge.api.body_limit import BodyLimitMiddleware
from imageforge.api.docs import install_offline_docs
from imageforge.api.errors import install_error_handlers
from imageforge.api.responses import ERROR_RESPONSES
from imageforge.api.routes import bench, files, health, images, results, usage
from imageforge.runtime import Runtime, StorageFactory
from imageforge.settings import Settings

DESCRIPTION = """\
The GPT Image 2 asynchronous task API: create a task with `POST /v1/image2/images`, get its id
at once, then poll `GET /v1/result/{id}` every few seconds until it is `completed` (with a
signed `image_url`) or `failed` (with an `error`).

Every API request carries `Authorization: Bearer <api key>`. Errors have an OpenAI-style body:
`{"error": {"message", "type", "param", "code"}}`.
"""


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    storage: StorageFactory | None = None,
    tune_gc: bool = False,
) -> FastAPI:
    """The ASGI app; its lifespan starts and stops the `Runtime` (see `Runtime.start`
    for `storage` and `tune_gc`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(
            settings, run_worker=run_worker, storage=storage, tune_gc=tune_gc
        )
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="imageforge",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served from the package instead of a CDN (api/docs.py).
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Here rather than in the server, so the setting holds under any ASGI server; the
    # scheme it passes on is what image links are built with.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    install_error_handlers(app, unavailable_retry_after=settings.unavailable_retry_after_seconds)
    app.include_router(images.router)
    app.include_router(results.router)
    app.include_router(usage.router)
    app.include_router(files.router)
    app.include_router(health.router)
    if settings.bench_endpoints:
        app.include_router(bench.router)
    install_offline_docs(app)
    _document_validation_as_400(app)
    return app


def _document_validation_as_400(app: FastAPI) -> None:
    """FastAPI documents a 422 for every route with parameters, but imageforge answers
    invalid input with 400 and its own error body; the document says so."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for operations in schema["paths"].values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    generated = responses.get("422", {})
                    if "HTTPValidationError" in str(generated):
                        del responses["422"]
                        responses.setdefault("400", _openapi_error(400))
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _openapi_error(status: int) -> dict[str, Any]:
    entry = ERROR_RESPONSES[status]
    return {
        "description": entry["description"],
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                "example": entry["content"]["application/json"]["example"],
            }
        },
    }
