"""The reference fetcher against real sockets, all on loopback.

One HTTP server on 127.0.0.1:PORT is allow-listed. Two sentinels listen on the SAME port number
at 127.0.0.2 and [::1]; they are never allow-listed, count every TCP connection they accept, and
an autouse fixture fails any test after which either was reached. Sharing the port matters: a
fetcher that re-resolved a name, or connected to something other than what it checked, would
land on a sentinel rather than on a closed port.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

from imageforge.engines.base import ReferenceImage
from imageforge.errors import ConfigurationError, ImageforgeError
from imageforge.references import FetchLimits, ReferenceFetcher, ReferenceFetchError

ALLOW = ["127.0.0.1"]
SMALL_CAP = 16 * 1024


# --- payloads -----------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: the decompression-bomb shape."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


SMALL = Image.new("RGB", (7, 5), (200, 30, 30))
PNG = _encode(SMALL, "PNG")
JPEG = _encode(SMALL, "JPEG")
WEBP = _encode(SMALL, "WEBP")
GIF = _encode(SMALL, "GIF")
BMP = _encode(SMALL, "BMP")
TIFF = _encode(SMALL, "TIFF")
NOISY_PNG = _encode(_noise(96, 96), "PNG")
NOISY_JPEG = _encode(_noise(96, 96), "JPEG")
SOLID_400x300 = _encode(Image.new("L", (400, 300), 128), "PNG")
# Decompressed, these zeros are 320 times the cap; compressed, they fit well under it.
GZIP_BOMB = gzip.compress(b"\x00" * (SMALL_CAP * 320), compresslevel=9)
assert len(GZIP_BOMB) < SMALL_CAP

STATIC: dict[str, tuple[bytes, str]] = {
    "/png": (PNG, "image/png"),
    "/x.png": (PNG, "image/png"),
    "/jpeg": (JPEG, "image/jpeg"),
    "/webp": (WEBP, "image/webp"),
    "/gif": (GIF, "image/gif"),
    "/bmp": (BMP, "image/bmp"),
    "/tiff": (TIFF, "image/tiff"),
    "/text": (b"this is not an image", "text/plain"),
    "/empty": (b"", "image/png"),
    "/truncated-png": (NOISY_PNG[: len(NOISY_PNG) // 2], "image/png"),
    "/truncated-jpeg": (NOISY_JPEG[: len(NOISY_JPEG) // 2], "image/jpeg"),
    "/bomb-huge": (_png_declaring(100_000, 100_000), "image/png"),
    "/bomb-warn": (_png_declaring(10_000, 10_000), "image/png"),
    "/solid-400x300": (SOLID_400x300, "image/png"),
    "/big": (os.urandom(SMALL_CAP * 4), "image/png"),
}


# --- servers --------------------------------------------------------------------------------------


@dataclass
class Servers:
    port: int
    hits: dict[str, int] = field(default_factory=lambda: {"127.0.0.2": 0, "::1": 0})
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _MainServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, headers={"Location": location})

    def do_GET(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        with state.lock:
            state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if path in STATIC:
            body, content_type = STATIC[path]
            self._send(200, body, {"Content-Type": content_type})
        elif path == "/redirect":
            self._redirect(query["to"][0], int(query.get("code", ["302"])[0]))
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self._send(200, PNG, {"Content-Type": "image/png"})
            else:
                self._redirect(f"/chain/{left - 1}")
        elif path == "/loop":
            self._redirect("/loop")
        elif path == "/redirect-no-location":
            self._send(302)
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"nope")
        elif path == "/huge-content-length":
            # Claims a gigabyte; must be refused before anything is read.
            self._send(200, b"x" * 10, {"Content-Length": str(10**9)})
            self.close_connection = True
        elif path == "/understated-length":
            # Declares the PNG's length, then keeps going with 4x the cap.
            self._send(200, PNG + os.urandom(SMALL_CAP * 4), {"Content-Length": str(len(PNG))})
            self.close_connection = True
        elif path == "/overstated-length":
            # Declares 10x what it sends, then hangs up.
            self._send(200, NOISY_PNG[:1000], {"Content-Length": "10000"})
            self.close_connection = True
        elif path == "/no-content-length":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(os.urandom(SMALL_CAP * 4))
            self.close_connection = True
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(16):
                piece = os.urandom(SMALL_CAP // 4)
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/gzip-bomb":
            self._send(200, GZIP_BOMB, {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        elif path == "/gzip-big":
            self._send(200, gzip.compress(os.urandom(SMALL_CAP * 2)), {"Content-Encoding": "gzip"})
        elif path == "/gzip-png":
            self._send(200, gzip.compress(PNG), {"Content-Encoding": "gzip"})
        elif path == "/png-labelled-gzip":
            self._send(200, PNG, {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            deadline = time.monotonic() + 5
            try:
                while time.monotonic() < deadline:
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            self.close_connection = True
        else:
            self._send(404, b"no such route")


class _MainServer(ThreadingHTTPServer):
    daemon_threads = True
    state: Servers


class _Sentinel(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, servers: Servers) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.record = host
        self.servers = servers
        super().__init__((host, port), _SentinelHandler)


class _SentinelHandler(socketserver.BaseRequestHandler):
    server: _Sentinel

    def handle(self) -> None:
        with self.server.servers.lock:
            self.server.servers.hits[self.server.record] += 1
        # Answer like a real service would, so a leak would look like success, not an error.
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")


def _start(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return thread


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    # The sentinels take the main server's port number; retry on the rare clash.
    for _attempt in range(10):
        main = _MainServer(("127.0.0.1", 0), _Handler)
        port = main.server_address[1]
        state = Servers(port=port)
        main.state = state
        try:
            sentinels = [_Sentinel("127.0.0.2", port, state), _Sentinel("::1", port, state)]
        except OSError:
            main.server_close()
            continue
        break
    else:  # pragma: no cover
        pytest.fail("could not bind the sentinels on the main server's port")
    everything: list[socketserver.BaseServer] = [main, *sentinels]
    for server in everything:
        _start(server)
    yield state
    for server in everything:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _sentinels_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "servers" in request.fixturenames:
        state: Servers = request.getfixturevalue("servers")
        assert state.hits == {"127.0.0.2": 0, "::1": 0}, "a sentinel was reached"


class FakeDNS:
    """Answers for invented names; everything else goes to the real resolver (loopback only)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.calls: list[str] = []

    def set(self, name: str, *rounds: list[str]) -> None:
        """Each call for `name` uses the next round of answers; the last one repeats."""
        self.answers[name] = list(rounds)

    def __call__(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def getaddrinfo(
            host: str | bytes | None,
            port: object,
            family: int = 0,
            type: int = 0,
            proto: int = 0,
            flags: int = 0,
        ) -> Any:
            name = (host.decode() if isinstance(host, bytes) else str(host)).rstrip(".")
            if name in self.answers:
                self.calls.append(name)
                rounds = self.answers[name]
                current = rounds.pop(0) if len(rounds) > 1 else rounds[0]
                return [
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(str(port)), 0, 0))
                    if ":" in a
                    else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(str(port))))
                    for a in current
                ]
            if name.endswith((".test", ".intranet", ".invalid")):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real(host, port, family, type, proto, flags)

        return getaddrinfo


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake(socket.getaddrinfo))
    return fake


async def fetch(
    urls: list[str], *, allowlist: list[str] | None = None, **limits: Any
) -> list[ReferenceImage]:
    fetcher = ReferenceFetcher(
        allowlist=ALLOW if allowlist is None else allowlist, limits=FetchLimits(**limits)
    )
    try:
        return list(await fetcher.fetch_all(urls))
    finally:
        await fetcher.aclose()


async def refused(
    url: str, *, allowlist: list[str] | None = None, **limits: Any
) -> ReferenceFetchError:
    with pytest.raises(ReferenceFetchError) as caught:
        await fetch([url], allowlist=allowlist, **limits)
    return caught.value


# --- success ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [("/png", "PNG"), ("/jpeg", "JPEG"), ("/webp", "WEBP"), ("/gif", "GIF")],
)
async def test_allowed_formats_are_returned(servers: Servers, path: str, fmt: str) -> None:
    url = servers.url(path)
    [image] = await fetch([url])
    assert (image.format, image.width, image.height) == (fmt, 7, 5)
    assert image.url == url
    assert image.data == STATIC[path][0]


async def test_many_references_keep_their_order(servers: Servers) -> None:
    paths = ["/gif", "/png", "/webp", "/jpeg", "/png", "/gif", "/jpeg"]
    images = await fetch([servers.url(p) for p in paths])
    assert [i.format for i in images] == ["GIF", "PNG", "WEBP", "JPEG", "PNG", "GIF", "JPEG"]


async def test_no_references_is_fine() -> None:
    assert await fetch([]) == []


async def test_request_headers(servers: Servers) -> None:
    url = servers.url("/png?headers-check")
    await fetch([url])
    [headers] = [h for path, h in servers.requests if path == "/png?headers-check"]
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"].startswith("imageforge/")
    assert headers["host"] == f"127.0.0.1:{servers.port}"


async def test_allowlisted_hostname_connects_to_the_address_it_resolved(
    servers: Servers, dns: FakeDNS
) -> None:
    dns.set("images.intranet", ["127.0.0.1"])
    [image] = await fetch(
        [f"http://IMAGES.intranet.:{servers.port}/png"], allowlist=["images.intranet"]
    )
    assert image.format == "PNG"
    assert dns.calls == ["images.intranet"]


async def test_localhost_is_allowed_only_through_the_allowlist(servers: Servers) -> None:
    url = f"http://localhost:{servers.port}/png"
    error = await refused(url, allowlist=[])
    assert "is not allowed (loopback); localhost resolves to it" in str(error)
    assert not error.retryable
    # An address entry matches what the name resolved to (localhost -> 127.0.0.1 here).
    if {a[4][0] for a in socket.getaddrinfo("localhost", 80)} == {"127.0.0.1"}:
        [image] = await fetch([url], allowlist=["127.0.0.1"])
        assert image.format == "PNG"


async def test_redirects_within_the_limit_are_followed(servers: Servers) -> None:
    images = await fetch(
        [servers.url("/chain/5")]
        + [
            servers.url(f"/redirect?to={quote(servers.url('/png'))}&code={code}")
            for code in (301, 303, 307, 308)
        ]
    )
    assert [i.format for i in images] == ["PNG"] * 5


# --- SSRF: every spelling of a sentinel ----------------------------------------------------------


def _sentinel_spellings() -> list[tuple[str, str]]:
    return [
        ("http://127.0.0.2:{port}/png", "loopback"),
        ("http://2130706434:{port}/png", "loopback"),
        ("http://0x7f000002:{port}/png", "loopback"),
        ("http://0X7F000002:{port}/png", "loopback"),
        ("http://017700000002:{port}/png", "loopback"),
        ("http://127.2:{port}/png", "loopback"),
        ("http://127.0.2:{port}/png", "loopback"),
        ("http://0x7f.2:{port}/png", "loopback"),
        ("http://0x7f.0.0.2:{port}/png", "loopback"),
        ("http://[::1]:{port}/png", "loopback"),
        ("http://[0:0:0:0:0:0:0:1]:{port}/png", "loopback"),
        ("http://[::ffff:127.0.0.2]:{port}/png", "loopback"),
        ("http://[0:0:0:0:0:ffff:7f00:2]:{port}/png", "loopback"),
        ("http://[::ffff:7f00:2]:{port}/png", "loopback"),
        ("http://[::127.0.0.2]:{port}/png", "loopback"),
        ("http://[64:ff9b::7f00:2]:{port}/png", "loopback"),
        ("http://[2002:7f00:2::1]:{port}/png", "loopback"),
        ("http://localhost:{port}/png", "loopback"),
        ("http://LocalHost:{port}/png", "loopback"),
        ("http://sentinel.test:{port}/png", "loopback"),
        ("http://both.test:{port}/png", "loopback"),
        ("http://[::]:{port}/png", "unspecified"),
        ("http://0.0.0.0:{port}/png", "unspecified"),
        ("http://0:{port}/png", "unspecified"),
    ]


def _sentinel_cases() -> list[object]:
    cases: list[object] = []
    for template, reason in _sentinel_spellings():
        for allowlist, label in (([], "no-allowlist"), (ALLOW, "allow-127.0.0.1")):
            # localhost is 127.0.0.1 here, which the second allowlist rightly admits.
            if "localhost" in template.lower() and allowlist:
                continue
            cases.append(pytest.param(template, reason, allowlist, id=f"{template}-{label}"))
    return cases


@pytest.mark.parametrize(("template", "reason", "allowlist"), _sentinel_cases())
async def test_sentinel_spellings_are_refused(
    servers: Servers, dns: FakeDNS, template: str, reason: str, allowlist: list[str]
) -> None:
    dns.set("sentinel.test", ["127.0.0.2"])
    # A name with one allowed and one refused answer is refused whole: rebinding's signature.
    dns.set("both.test", ["127.0.0.1", "127.0.0.2"])
    error = await refused(template.format(port=servers.port), allowlist=allowlist)
    assert f"is not allowed ({reason})" in error.reason
    assert not error.retryable


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://0177.0.0.2:{port}/png", "not a valid URL"),
        ("http://[::1%25lo]:{port}/png", "'%'"),
        ("http://127.0.0.2%2e:{port}/png", "'%'"),
    ],
)
async def test_unparseable_sentinel_spellings_are_refused(
    servers: Servers, url: str, why: str
) -> None:
    error = await refused(url.format(port=servers.port))
    assert why in error.reason


async def test_the_error_names_index_url_and_reason(servers: Servers) -> None:
    bad = f"http://127.0.0.2:{servers.port}/x.png"
    with pytest.raises(ReferenceFetchError) as caught:
        await fetch([servers.url("/png"), bad])
    error = caught.value
    assert str(error) == f"image_urls[1] ({bad}): address 127.0.0.2 is not allowed (loopback)"
    assert (error.index, error.url, error.retryable) == (1, bad, False)
    assert isinstance(error, ImageforgeError)
    assert error.code == "invalid_reference"


async def test_long_urls_are_trimmed_in_the_message(servers: Servers) -> None:
    bad = f"http://127.0.0.2:{servers.port}/" + "a" * 500
    error = await refused(bad)
    assert len(error.url) <= 200
    assert error.url.endswith("…")
    assert error.index == 0


async def test_dns_rebinding_cannot_swap_the_address(servers: Servers, dns: FakeDNS) -> None:
    # First answer allowed, every later one the sentinel: a fetcher that checks, then lets
    # the HTTP client resolve again, connects to 127.0.0.2.
    dns.set("rebind.test", ["127.0.0.1"], ["127.0.0.2"])
    [image] = await fetch([f"http://rebind.test:{servers.port}/png"])
    assert image.format == "PNG"
    assert dns.calls == ["rebind.test"]
    # The next connection resolves afresh and is checked afresh.
    error = await refused(f"http://rebind.test:{servers.port}/png")
    assert "address 127.0.0.2 is not allowed (loopback)" in error.reason


async def test_an_allowlisted_name_does_not_admit_other_names(
    servers: Servers, dns: FakeDNS
) -> None:
    dns.set("images.intranet", ["127.0.0.1"])
    dns.set("other.intranet", ["127.0.0.1"])
    error = await refused(
        f"http://other.intranet:{servers.port}/png", allowlist=["images.intranet"]
    )
    assert "is not allowed (loopback)" in error.reason


async def test_an_allowlisted_name_must_still_resolve(dns: FakeDNS) -> None:
    error = await refused("http://images.intranet/png", allowlist=["images.intranet"])
    assert "does not resolve" in error.reason
    assert not error.retryable


# --- redirects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/png",
        "//127.0.0.2:{port}/png",
        "http://2130706434:{port}/png",
        "http://[::1]:{port}/png",
        "http://[::ffff:127.0.0.2]:{port}/png",
        "http://sentinel.test:{port}/png",
    ],
)
async def test_redirects_to_the_sentinel_are_refused(
    servers: Servers, dns: FakeDNS, target: str
) -> None:
    dns.set("sentinel.test", ["127.0.0.2"])
    location = target.format(port=servers.port)
    error = await refused(servers.url(f"/redirect?to={quote(location)}"))
    assert error.reason.startswith("redirect to ")
    assert "is not allowed (loopback)" in error.reason
    assert not error.retryable


async def test_redirect_from_an_allowlisted_name_is_checked_again(
    servers: Servers, dns: FakeDNS
) -> None:
    dns.set("images.intranet", ["127.0.0.1"])
    location = quote(f"http://127.0.0.2:{servers.port}/png")
    error = await refused(
        f"http://images.intranet:{servers.port}/redirect?to={location}",
        allowlist=["images.intranet"],
    )
    assert "address 127.0.0.2 is not allowed (loopback)" in error.reason


@pytest.mark.parametrize("path", ["/chain/6", "/loop"])
async def test_too_many_redirects(servers: Servers, path: str) -> None:
    error = await refused(servers.url(path))
    assert error.reason == "more than 5 redirects"
    assert not error.retryable


async def test_redirect_limit_is_configurable(servers: Servers) -> None:
    error = await refused(servers.url("/chain/1"), max_redirects=0)
    assert error.reason == "more than 0 redirects"


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://127.0.0.1:70/_x", "scheme 'gopher'"),
        ("ftp://127.0.0.1/x", "scheme 'ftp'"),
        ("http://user:secret@127.0.0.1:{port}/png", "credentials"),
    ],
)
async def test_redirects_to_forbidden_urls(servers: Servers, location: str, why: str) -> None:
    error = await refused(servers.url(f"/redirect?to={quote(location.format(port=servers.port))}"))
    assert why in error.reason
    assert "secret" not in error.reason


async def test_redirect_without_location(servers: Servers) -> None:
    error = await refused(servers.url("/redirect-no-location"))
    assert "without a Location" in error.reason


# --- URLs refused on their face -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://127.0.0.1/x.png", "scheme 'ftp'"),
        ("gopher://127.0.0.1:70/_GET%20/", "scheme 'gopher'"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme 'data'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("//127.0.0.1/png", "scheme (none)"),
        ("http:///png", "no host"),
        ("http://exa\nmple.com/", "control characters"),
        ("http://" + "a" * 9000 + ".com/", "longer than"),
    ],
)
async def test_non_http_and_malformed_urls(url: str, why: str) -> None:
    error = await refused(url)
    assert why in error.reason
    assert not error.retryable


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@127.0.0.1:{port}/png",
        "http://user@127.0.0.1:{port}/png",
        "http://:secret@127.0.0.1:{port}/png",
        "http://127.0.0.1:{port}@127.0.0.2:{port}/png",
    ],
)
async def test_urls_with_credentials(servers: Servers, url: str) -> None:
    error = await refused(url.format(port=servers.port))
    assert error.reason == "credentials in the URL are not allowed"
    assert "secret" not in str(error)
    assert "@" not in error.url


async def test_a_bad_url_fails_before_any_fetch(servers: Servers) -> None:
    before = len(servers.requests)
    with pytest.raises(ReferenceFetchError) as caught:
        await fetch([servers.url("/png?first"), "file:///etc/passwd"])
    assert caught.value.index == 1
    assert len(servers.requests) == before


# --- size caps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/big", "larger than the 16384-byte limit"),
        ("/huge-content-length", "body of 1000000000 bytes is larger than"),
        ("/no-content-length", "larger than the 16384-byte limit"),
        ("/chunked", "larger than the 16384-byte limit"),
        ("/gzip-big", "larger than the 16384-byte limit"),
    ],
)
async def test_byte_cap(servers: Servers, path: str, why: str) -> None:
    error = await refused(servers.url(path), max_bytes=SMALL_CAP)
    assert why in error.reason
    assert not error.retryable


async def test_understated_content_length_reads_no_more_than_declared(servers: Servers) -> None:
    # HTTP/1.1 framing ends the body at the declared length; the oversized remainder is never
    # read, so it can neither slip past the cap nor reach the decoder.
    [image] = await fetch([servers.url("/understated-length")], max_bytes=SMALL_CAP)
    assert image.data == PNG


async def test_overstated_content_length_is_a_broken_response(servers: Servers) -> None:
    error = await refused(servers.url("/overstated-length"), max_bytes=SMALL_CAP)
    assert error.reason.startswith("connection failed")
    assert error.retryable


async def test_gzip_bomb_is_judged_by_raw_bytes_and_never_decompressed(servers: Servers) -> None:
    error = await refused(servers.url("/gzip-bomb"), max_bytes=SMALL_CAP)
    # Decompressed, it would have blown the cap; raw, it fits and is simply not an image.
    assert "larger" not in error.reason
    assert error.reason.startswith("not a PNG, JPEG, WEBP, GIF image")
    assert "Content-Encoding: gzip" in error.reason


async def test_gzipped_image_is_not_decoded(servers: Servers) -> None:
    error = await refused(servers.url("/gzip-png"))
    assert error.reason.startswith("not a PNG")


async def test_raw_image_with_a_wrong_content_encoding_label_is_accepted(servers: Servers) -> None:
    [image] = await fetch([servers.url("/png-labelled-gzip")])
    assert image.format == "PNG"


# --- time -----------------------------------------------------------------------------------------


async def test_slowloris_hits_the_total_deadline(servers: Servers) -> None:
    started = time.monotonic()
    error = await refused(servers.url("/slow"), total_timeout_s=0.5)
    assert time.monotonic() - started < 3
    assert error.reason == "took longer than 0.5 s"
    assert error.retryable


async def test_first_failure_cancels_the_rest(servers: Servers) -> None:
    started = time.monotonic()
    with pytest.raises(ReferenceFetchError) as caught:
        await fetch([servers.url("/slow"), servers.url("/status/404")])
    assert caught.value.index == 1
    assert time.monotonic() - started < 3


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/bomb-huge", "decompression bomb"),
        ("/truncated-png", "corrupt or truncated"),
        ("/truncated-jpeg", "corrupt or truncated"),
        ("/text", "not a PNG, JPEG, WEBP, GIF image"),
        ("/empty", "not a PNG, JPEG, WEBP, GIF image"),
        ("/bmp", "not a PNG, JPEG, WEBP, GIF image"),
        ("/tiff", "not a PNG, JPEG, WEBP, GIF image"),
    ],
)
async def test_bad_images(servers: Servers, path: str, why: str) -> None:
    error = await refused(servers.url(path))
    assert why in error.reason
    assert not error.retryable


async def test_pixel_limit(servers: Servers) -> None:
    error = await refused(servers.url("/solid-400x300"), max_pixels=100_000)
    assert error.reason == "image is 400x300, more than 100000 pixels"
    [image] = await fetch([servers.url("/solid-400x300")], max_pixels=120_000)
    assert (image.width, image.height) == (400, 300)


async def test_pillow_bomb_warning_is_an_error_even_where_warnings_are_ignored(
    servers: Servers,
) -> None:
    # 100 MP: above Pillow's warning threshold, below its hard error, below our max_pixels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        error = await refused(servers.url("/bomb-warn"), max_pixels=10**9)
    assert "decompression bomb" in error.reason


# --- status codes and connection errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(404, False), (403, False), (410, False), (300, False), (429, True), (500, True), (503, True)],
)
async def test_status_codes(servers: Servers, status: int, retryable: bool) -> None:
    error = await refused(servers.url(f"/status/{status}"))
    assert error.reason == f"server answered HTTP {status}"
    assert error.retryable is retryable


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await refused(f"http://127.0.0.1:{port}/png")
    assert error.reason.startswith("could not connect")
    assert error.retryable


# --- TLS: connect to the pinned address, verify the hostname -----------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=images.test",
            "-addext",
            "subjectAltName=DNS:images.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tls_cert: tuple[Path, Path]) -> Iterator[tuple[int, list[str | None]]]:
    cert, key = tls_cert
    seen_sni: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)
    server = _MainServer(("127.0.0.1", 0), _Handler)
    server.state = Servers(port=server.server_address[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _start(server)
    yield server.server_address[1], seen_sni
    server.shutdown()
    server.server_close()


async def test_tls_keeps_the_hostname_for_sni_and_verification(
    tls_cert: tuple[Path, Path],
    tls_server: tuple[int, list[str | None]],
    dns: FakeDNS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, seen_sni = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))
    dns.set("images.test", ["127.0.0.1"])
    dns.set("wrong.test", ["127.0.0.1"])
    [image] = await fetch([f"https://images.test:{port}/png"], allowlist=["images.test"])
    assert image.format == "PNG"
    assert seen_sni[-1] == "images.test"
    # The certificate is checked against the URL's name, not against the pinned address.
    error = await refused(f"https://wrong.test:{port}/png", allowlist=["wrong.test"])
    assert error.reason.startswith("TLS handshake failed")
    assert not error.retryable
    assert seen_sni[-1] == "wrong.test"


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "*.example.com", "images.intranet:8080"])
def test_allowlist_entries_that_mean_nothing_are_configuration_errors(entry: str) -> None:
    with pytest.raises(ConfigurationError):
        ReferenceFetcher(allowlist=[entry])


def test_a_fetcher_can_be_built_outside_an_event_loop() -> None:
    ReferenceFetcher(allowlist=["127.0.0.1", " 10.0.0.0/8 ", "[::1]", "images.intranet", ""])


async def test_a_fetcher_can_be_closed_without_fetching() -> None:
    fetcher = ReferenceFetcher(allowlist=ALLOW)
    await fetcher.aclose()
