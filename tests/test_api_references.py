"""Reference images through the whole server: fetched, used, or refused without contact."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ApiHarness, make_settings, start_harness


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), color).save(buffer, format="PNG")
    return buffer.getvalue()


class _ImageHandler(BaseHTTPRequestHandler):
    hits: list[str]

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        colors = {"/red.png": (255, 0, 0), "/blue.png": (0, 0, 255)}
        if self.path not in colors:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = _png(colors[self.path])
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(host: str, port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _ImageHandler)
    server.hits = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def image_server() -> Iterator[ThreadingHTTPServer]:
    server = _serve("127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sentinel(image_server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """Same port, a loopback address that is not allow-listed: must never be reached."""
    server = _serve("127.0.0.2", image_server.server_address[1])
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
async def api_with_allowlist(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    settings = make_settings(tmp_path / "data", reference_allowlist="127.0.0.1")
    lifespan, harness = await start_harness(settings)
    try:
        yield harness
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


def _red_share(png: bytes) -> float:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.resize((image.width // 4, image.height // 4), Image.Resampling.NEAREST)
    pixels = list(small.get_flattened_data())
    red = sum(1 for r, g, b in pixels if r > 200 and g < 60 and b < 60)
    return red / len(pixels)


async def test_allow_listed_references_are_fetched_and_visibly_used(
    api_with_allowlist: ApiHarness, image_server: ThreadingHTTPServer
) -> None:
    api = api_with_allowlist
    key = await api.new_key()
    port = image_server.server_address[1]
    with_ref = await api.create(
        key, prompt="still life", image_urls=[f"http://127.0.0.1:{port}/red.png"]
    )
    without = await api.create(key, prompt="still life")
    images = []
    for response in (with_ref, without):
        result = await api.wait_terminal(key, response.json()["id"])
        assert result["status"] == "completed", result
        images.append((await api.client.get(result["image_url"])).content)
    assert image_server.hits == ["/red.png"]  # type: ignore[attr-defined]
    assert _red_share(images[0]) > _red_share(images[1]) + 0.005


async def test_a_reference_outside_the_allowlist_fails_the_task_unreached(
    api_with_allowlist: ApiHarness, sentinel: ThreadingHTTPServer
) -> None:
    api = api_with_allowlist
    key = await api.new_key()
    port = sentinel.server_address[1]
    urls = [f"http://127.0.0.1:{port}/red.png", f"http://127.0.0.2:{port}/blue.png"]
    response = await api.create(key, image_urls=urls)
    result = await api.wait_terminal(key, response.json()["id"])
    assert result["status"] == "failed"
    assert result["image_url"] is None
    assert "image_urls[1]" in result["error"] and "127.0.0.2" in result["error"]
    assert "not allowed" in result["error"]
    assert sentinel.hits == []  # type: ignore[attr-defined]


async def test_a_missing_reference_fails_with_its_status(
    api_with_allowlist: ApiHarness, image_server: ThreadingHTTPServer
) -> None:
    api = api_with_allowlist
    key = await api.new_key()
    port = image_server.server_address[1]
    response = await api.create(key, image_urls=[f"http://127.0.0.1:{port}/gone.png"])
    result = await api.wait_terminal(key, response.json()["id"])
    assert result["status"] == "failed"
    assert "image_urls[0]" in result["error"] and "404" in result["error"]


def test_loopback_sentinel_port_is_free_for_ipv4_second_address() -> None:
    # 127.0.0.2 must be bindable on this machine for the sentinel tests to mean anything.
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))


async def test_create_and_fetch_count_references_alike(
    api_with_allowlist: ApiHarness, sentinel: ThreadingHTTPServer
) -> None:
    # The second URL is `image_urls[1]` whether it is refused at create or at fetch time.
    api = api_with_allowlist
    key = await api.new_key()
    port = sentinel.server_address[1]
    good = f"http://127.0.0.1:{port}/red.png"
    rejected = await api.create(key, image_urls=[good, "ftp://127.0.0.1/x.png"])
    assert rejected.status_code == 400
    assert rejected.json()["error"]["param"] == "image_urls[1]"
    assert rejected.json()["error"]["message"].startswith("image_urls[1]: ")
    accepted = await api.create(key, image_urls=[good, f"http://127.0.0.2:{port}/blue.png"])
    result = await api.wait_terminal(key, accepted.json()["id"])
    assert result["status"] == "failed"
    assert result["error"].startswith("image_urls[1] (http://127.0.0.2:")
    assert sentinel.hits == []  # type: ignore[attr-defined]
