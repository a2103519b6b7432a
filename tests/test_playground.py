"""The playground's page and files as the server serves them (the browser test drives them:
tests/test_playground_browser.py), and that a non-editable install ships them."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from imageforge.api.routes.playground import install_playground
from imageforge.testing.processes import ServerProcess
from tests.sdk_servers import serve_imageforge

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ("playground/assets/app.js", "playground/assets/style.css")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_imageforge(tmp_path_factory, "playground")


def test_the_banner_prints_the_playground_url_and_it_serves_the_page(
    server: ServerProcess,
) -> None:
    printed = re.search(r"(http://\S+/playground)\b", server.output())
    assert printed, server.output()
    for url in (printed[1], f"{server.base_url}/"):
        page = httpx.get(url)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<label for="api-key">' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        for asset in ASSETS:
            assert f'"/{asset}"' in page.text
            assert httpx.get(f"{server.base_url}/{asset}").status_code == 200


def test_links_carry_the_prefix_a_proxy_mounts_the_app_under() -> None:
    app = FastAPI()
    install_playground(app)
    # What uvicorn's --root-path (or a proxy's X-Forwarded-Prefix handling) sets.
    with TestClient(app, root_path="/imageforge") as client:
        page = client.get("/playground").text
    assert 'data-root="/imageforge"' in page
    assert '"/imageforge/playground/assets/app.js"' in page and "{{root}}" not in page


def test_the_playground_is_not_part_of_the_api_document(server: ServerProcess) -> None:
    paths = httpx.get(f"{server.base_url}/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/playground")]
    assert httpx.get(f"{server.base_url}/docs").status_code == 200


def test_a_wheel_of_the_server_ships_the_playground(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("imageforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("playground/index.html", *ASSETS):
        assert f"imageforge/api/{name}" in names, sorted(names)
