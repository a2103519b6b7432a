"""The web playground at `/` and `/playground`: a page that uses only the public API.

The page, its script and its stylesheet ship in the package (`api/playground/`), plain files
with no build step. It is not part of the API, so it is not in `/openapi.json`.

The page is served with a strict Content-Security-Policy: the key lives in the browser's
local storage, so no script but the page's own may run, and requests (`connect-src`) go only
to this server. Images may come from anywhere, because `image_url` may point at a bucket.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

PLAYGROUND_PATH = "/playground"
ASSETS_PATH = "/playground/assets"
#: Where the page says its links are rooted (behind a proxy that mounts the app under a prefix).
_ROOT_MARKER = "{{root}}"
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src * data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # The page changes with the package; the assets are revalidated the same way.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _directory() -> Path:
    return Path(str(files("imageforge.api") / "playground"))


@cache
def _page_template() -> str:
    return (_directory() / "index.html").read_text(encoding="utf-8")


@router.get("/")
@router.get(PLAYGROUND_PATH)
async def playground(request: Request) -> HTMLResponse:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    page = _page_template().replace(_ROOT_MARKER, escape(root, quote=True))
    return HTMLResponse(page, headers=_HEADERS)


def install_playground(app: FastAPI) -> None:
    app.mount(ASSETS_PATH, StaticFiles(directory=_directory() / "assets"), name="playground-assets")
    app.include_router(router)
