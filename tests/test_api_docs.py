"""/docs and /redoc work offline: the pages name only the server's own URLs, and the
scripts and stylesheets they name are served by it."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tests.conftest import ApiHarness

PAGES = ("/docs", "/redoc")
#: What each page must load to show anything.
NEEDED = {
    "/docs": ("swagger-ui-bundle.js", "swagger-ui.css"),
    "/redoc": ("redoc.standalone.js",),
}


class _References(HTMLParser):
    """Every URL an HTML page makes the browser fetch or follow."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.urls.append(value)


def _references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    # Inline scripts name URLs too (Swagger UI's `url: '/openapi.json'`).
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    inline = [url for script in scripts for url in re.findall(r"'([^']*/[^']*)'", script)]
    return parser.urls + inline


@pytest.mark.parametrize("page", PAGES)
async def test_the_page_names_only_local_urls_and_each_loads(api: ApiHarness, page: str) -> None:
    response = await api.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html, html
    urls = _references(html)
    assert "/openapi.json" in urls
    for needed in NEEDED[page]:
        assert f"/docs/assets/{needed}" in urls, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await api.client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    print(f"\n{page}: {len(urls)} local URLs, all served")


async def test_the_assets_are_the_real_scripts(api: ApiHarness) -> None:
    bundle = await api.client.get("/docs/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text[:2000]
    assert bundle.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    redoc = await api.client.get("/docs/assets/redoc.standalone.js")
    assert "Redoc" in redoc.text[:2000]
    css = await api.client.get("/docs/assets/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")


async def test_the_reference_pages_are_not_in_the_openapi_document(api: ApiHarness) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]


async def test_a_prefix_set_by_a_proxy_is_kept_in_the_links(api: ApiHarness) -> None:
    from httpx import ASGITransport, AsyncClient

    transport = ASGITransport(app=api.app, root_path="/imageforge")
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        html = (await client.get("/docs")).text
    assert "/imageforge/docs/assets/swagger-ui-bundle.js" in html
    assert "/imageforge/openapi.json" in html
