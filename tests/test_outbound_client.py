"""`OutboundClient` beyond what the reference fetcher uses: trusted origins, origin-bound
headers across redirects, and `post` (for callbacks), on loopback only.

The reference fetcher's own suite (`test_references.py`) covers the address corpus, rebinding,
caps and timeouts through the same client; here a sentinel on 127.0.0.2 at the server's port
must stay untouched by every test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imageforge.errors import ConfigurationError
from imageforge.references import AddressPolicy, OutboundClient, OutboundError, Timeouts
from tests.upstream_servers import Sentinel

TIMEOUTS = Timeouts(connect=2, read=2, total=5)


@dataclass
class Seen:
    #: (method, path, Authorization header, client port) of each request.
    requests: list[tuple[str, str, str, int]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.server.seen.requests.append((self.command, self.path, auth, self.client_address[1]))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/to/"):
            self._send(302, headers={"Location": self.path.removeprefix("/to/")})
        else:
            self._send(200, b"image bytes")

    def do_POST(self) -> None:
        self._record()
        self.server.seen.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/moved":
            self._send(308, headers={"Location": f"http://127.0.0.2:{self.server.port}/x"})
        elif self.path == "/gone":
            self._send(410, b'{"error": "gone"}', {"Retry-After": "7"})
        else:
            self._send(200, b"x" * 10_000)


class _Server(ThreadingHTTPServer):
    seen: Seen
    port: int


@pytest.fixture
def server() -> Iterator[_Server]:
    for _attempt in range(10):
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.seen, httpd.port = Seen(), httpd.server_address[1]
        try:
            sentinel = Sentinel("127.0.0.2", httpd.port)
        except OSError:
            httpd.server_close()
            continue
        break
    else:  # pragma: no cover
        pytest.fail("could not bind a sentinel on the server's port")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    sentinel.close()
    assert sentinel.connections == 0, "the sentinel was reached"


def client(policy: AddressPolicy, **options: object) -> OutboundClient:
    return OutboundClient(policy, user_agent="imageforge-test", **options)  # type: ignore[arg-type]


async def test_a_trusted_origin_is_that_host_and_port_only(server: _Server) -> None:
    other = _Server(("127.0.0.1", 0), _Handler)
    other.seen, other.port = Seen(), other.server_address[1]
    threading.Thread(target=other.serve_forever, daemon=True).start()
    guarded = client(AddressPolicy(trusted_origins=[("127.0.0.1", server.port)]))
    try:
        fetched = await guarded.get(
            f"http://127.0.0.1:{server.port}/a", max_bytes=100, timeouts=TIMEOUTS
        )
        assert fetched.body == b"image bytes"
        with pytest.raises(OutboundError) as caught:
            await guarded.get(f"http://127.0.0.1:{other.port}/a", max_bytes=100, timeouts=TIMEOUTS)
        assert caught.value.kind == "refused" and not caught.value.retryable
        assert caught.value.reason == "address 127.0.0.1 is not allowed (loopback)"
        with pytest.raises(OutboundError):
            await guarded.get(f"http://127.0.0.2:{server.port}/a", max_bytes=100, timeouts=TIMEOUTS)
    finally:
        await guarded.aclose()
        other.shutdown()
        other.server_close()
    assert other.seen.requests == []


async def test_redirects_are_not_followed_unless_asked(server: _Server) -> None:
    guarded = client(AddressPolicy(["127.0.0.1"]))
    url = f"http://127.0.0.1:{server.port}/to//final"
    try:
        with pytest.raises(OutboundError) as caught:
            await guarded.get(url, max_bytes=100, timeouts=TIMEOUTS)
        assert (caught.value.kind, caught.value.status) == ("status", 302)
        fetched = await guarded.get(url, max_bytes=100, timeouts=TIMEOUTS, max_redirects=1)
        assert fetched.body == b"image bytes"
    finally:
        await guarded.aclose()


async def test_origin_bound_headers_do_not_follow_a_redirect_elsewhere(server: _Server) -> None:
    # localhost and 127.0.0.1 reach the same server but are different origins.
    guarded = client(AddressPolicy(["127.0.0.1", "localhost"]))
    hop = f"http://localhost:{server.port}/final"
    try:
        await guarded.get(
            f"http://127.0.0.1:{server.port}/to/{hop}",
            max_bytes=100,
            timeouts=TIMEOUTS,
            headers={"Authorization": "Bearer sk-secret"},
            max_redirects=2,
        )
    finally:
        await guarded.aclose()
    assert [(path, auth) for _, path, auth, _ in server.seen.requests] == [
        (f"/to/{hop}", "Bearer sk-secret"),
        ("/final", ""),
    ]


async def test_post_sends_the_body_and_returns_any_status_with_a_bounded_body(
    server: _Server,
) -> None:
    guarded = client(AddressPolicy(["127.0.0.1"]))
    base = f"http://127.0.0.1:{server.port}"
    try:
        ok = await guarded.post(
            f"{base}/hook", b'{"id": 1}', timeouts=TIMEOUTS, max_answer_bytes=100
        )
        assert (ok.status, ok.body) == (200, b"x" * 100)
        gone = await guarded.post(f"{base}/gone", b"{}", timeouts=TIMEOUTS)
        assert (gone.status, gone.headers["retry-after"]) == (410, "7")
        # A redirect is the answer: a POST is never sent on, not even to the sentinel.
        moved = await guarded.post(f"{base}/moved", b"{}", timeouts=TIMEOUTS)
        assert moved.status == 308
    finally:
        await guarded.aclose()
    assert server.seen.bodies == [b'{"id": 1}', b"{}", b"{}"]


async def test_post_to_an_address_nobody_allowed_is_refused(server: _Server) -> None:
    guarded = client(AddressPolicy())
    try:
        with pytest.raises(OutboundError) as caught:
            await guarded.post(f"http://127.0.0.2:{server.port}/hook", b"{}", timeouts=TIMEOUTS)
        assert caught.value.kind == "refused"
        with pytest.raises(OutboundError) as caught:
            await guarded.post("http://user:pw@127.0.0.1/hook", b"{}", timeouts=TIMEOUTS)
        assert caught.value.reason == "credentials in the URL are not allowed"
    finally:
        await guarded.aclose()
    assert server.seen.requests == []


def test_a_bad_allowlist_entry_names_its_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"upstreams\.files\.download_allowlist entry"):
        AddressPolicy(["*.intranet"], setting="upstreams.files.download_allowlist")
