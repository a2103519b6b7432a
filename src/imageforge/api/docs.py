"""/docs (Swagger UI) and /redoc with their scripts served by the server itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a machine without internet,
where self-hosters often are, they stay blank. The `fastapi-offline` package ships the
files (swagger-ui-dist's bundle and stylesheet, ReDoc's standalone script, a favicon); they
are served from `/docs/assets/`, and the pages name nothing outside the server.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
#: Swagger UI otherwise sends the document to swagger.io's online validator for a badge.
_SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def _assets_directory() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_offline_docs(app: FastAPI) -> None:
    """Mount the assets and the two pages; `app` must be built with `docs_url=None` and
    `redoc_url=None`, so FastAPI's CDN pages are not mounted too."""
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets_directory()), name="docs-assets")

    title = f"{app.title} - API reference"

    def url(request: Request, path: str) -> str:
        # Behind a proxy that mounts the app under a prefix, links must carry it.
        return str(request.scope.get("root_path", "")).rstrip("/") + path

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, str(app.openapi_url)),
            title=title,
            swagger_js_url=url(request, f"{ASSETS_PATH}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS_PATH}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSETS_PATH}/favicon.png"),
            oauth2_redirect_url=url(request, OAUTH2_REDIRECT_PATH),
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **_SWAGGER_UI_PARAMETERS},
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, str(app.openapi_url)),
            title=title,
            redoc_js_url=url(request, f"{ASSETS_PATH}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSETS_PATH}/favicon.png"),
            with_google_fonts=False,
        )
