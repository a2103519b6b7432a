"""Slow, stalled, oversized and vanishing clients against a real `imageforge serve`, over
real sockets: every one gets a bounded wait and a clear answer, and none fills the log.

The limits are lowered (1 s) so the bounds are checked in seconds; each figure is printed.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator

import pytest

from imageforge.testing.processes import ServerProcess, create_key

TIMEOUT = 1.0
#: What a busy 2-core machine adds to a bound, at most.
MARGIN = 3.0
MAX_BODY = 4096


class Served:
    def __init__(self, server: ServerProcess, key: str) -> None:
        self.server = server
        self.key = key

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=TIMEOUT + 10)
        return sock

    def post_head(self, length: int | None = None, *, path: str = "/v1/image2/images") -> bytes:
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.server.port}",
            f"Authorization: Bearer {self.key}",
            "Content-Type: application/json",
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
            # The server closes once it has answered, so a reader knows the answer is whole.
            "Connection: close",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("limits") / "data"
    key = create_key(data)["key"]
    env = {
        "IMAGEFORGE_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
        "IMAGEFORGE_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
        "IMAGEFORGE_MAX_BODY_BYTES": str(MAX_BODY),
        "IMAGEFORGE_LOG_LEVEL": "info",
    }
    with ServerProcess(data, "--no-worker", **env) as server:
        yield Served(server, key)


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; → (bytes, seconds waited)."""
    started = time.monotonic()
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def split_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_headers_that_stall_get_a_408_and_the_connection_closed(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"POST /v1/image2/images HTTP/1.1\r\nHost: x\r\n")
        raw, waited = read_until_closed(sock)
    print(f"stalled headers: closed after {waited:.2f} s (bound {TIMEOUT} s)")
    assert TIMEOUT * 0.8 <= waited <= TIMEOUT + MARGIN
    status, headers, body = split_answer(raw)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    with served.connect() as sock:
        raw, waited = read_until_closed(sock)
    print(f"silent connection: closed after {waited:.2f} s")
    assert TIMEOUT * 0.8 <= waited <= TIMEOUT + MARGIN
    assert raw.startswith(b"HTTP/1.1 408")


def test_headers_trickled_byte_by_byte_still_meet_the_deadline(served: Served) -> None:
    """Each byte resets uvicorn's keep-alive timer; the header deadline it does not."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100
    with served.connect() as sock:
        started = time.monotonic()
        closed_at = None
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            time.sleep(TIMEOUT / 5)
        raw, _ = read_until_closed(sock)
        waited = (closed_at or time.monotonic()) - started
    print(f"trickled headers: closed after {waited:.2f} s")
    assert raw.startswith(b"HTTP/1.1 408")
    assert waited <= TIMEOUT + MARGIN + TIMEOUT / 5


def test_a_pipelined_request_whose_headers_stall_gets_its_408_after_the_first_answer(
    served: Served,
) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        raw, waited = read_until_closed(sock)
    print(f"pipelined, second headers stalled: closed after {waited:.2f} s")
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in rest
    assert TIMEOUT * 0.8 <= waited <= TIMEOUT + MARGIN


def test_a_body_that_stalls_gets_a_408_naming_the_body(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(served.post_head(200) + b'{"model": "gpt-image-2", ')
        raw, waited = read_until_closed(sock)
    print(f"stalled body: answered after {waited:.2f} s")
    assert TIMEOUT * 0.8 <= waited <= TIMEOUT + MARGIN
    status, headers, body = split_answer(raw)
    assert status == 408 and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["param"] == "body" and error["code"] == "request_timeout"
    assert error["message"].startswith("body: no data received for 1 s")


def test_a_slow_but_steady_body_is_read_whole(served: Served) -> None:
    """The body timeout is the wait for the next byte, not for the whole body."""
    body = b'{"model": "gpt-image-2", "prompt": "a slow fox"}'
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
    with served.connect() as sock:
        sock.sendall(served.post_head(len(body)))
        started = time.monotonic()
        for piece in pieces:
            time.sleep(TIMEOUT / 3)
            sock.sendall(piece)
        raw, _ = read_until_closed(sock)
    print(f"steady body: {len(pieces)} pieces over {time.monotonic() - started:.2f} s")
    status, _, answer = split_answer(raw)
    assert status == 200, answer
    assert json.loads(answer)["status"] == "queued"


def post_with_http_client(served: Served, body: bytes, *, chunked: bool) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {served.key}", "Content-Type": "application/json"}
        if chunked:
            pieces = iter([body[i : i + 1000] for i in range(0, len(body), 1000)])
            connection.request(
                "POST", "/v1/image2/images", body=pieces, headers=headers, encode_chunked=True
            )
        else:
            connection.request("POST", "/v1/image2/images", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("size", [MAX_BODY + 1, 300_000])
def test_a_body_too_large_is_the_same_413_declared_or_chunked_and_http_client_reads_it(
    served: Served, size: int
) -> None:
    body = b'{"model": "gpt-image-2", "prompt": "' + b"x" * size + b'"}'
    declared = post_with_http_client(served, body, chunked=False)
    chunked = post_with_http_client(served, body, chunked=True)
    assert declared[0] == chunked[0] == 413
    assert declared[1] == chunked[1]
    assert json.loads(declared[1])["error"] == {
        "message": f"body: must be at most {MAX_BODY:,} bytes",
        "type": "invalid_request_error",
        "param": "body",
        "code": "payload_too_large",
    }


def test_a_client_that_leaves_mid_body_is_one_info_line(served: Served) -> None:
    before = served.server.output()
    with served.connect() as sock:
        sock.sendall(served.post_head(1000) + b'{"model": "gpt-image-2", "pro')
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while "went away" not in served.server.output()[len(before) :]:
        assert time.monotonic() < deadline, served.server.output()[len(before) :]
        time.sleep(0.05)
    time.sleep(0.3)  # anything else it would log about this request
    logged = served.server.output()[len(before) :]
    print(logged)
    assert "Traceback" not in logged and "ERROR" not in logged
    # INFO lines are written in batches: earlier requests' lines may land after `before`
    # was read, so only this request's are looked at (its request line is the 499).
    lines = [
        line
        for line in logged.splitlines()
        if "went away" in line or ("imageforge.requests: " in line and " 499 " in line)
    ]
    # Its own line, and its request line: 499, the client closed the request.
    assert len(lines) == 2 and all(" INFO " in line for line in lines), lines
    assert "POST /v1/image2/images: the client went away after 29 bytes" in lines[0]
    assert "imageforge.requests: POST /v1/image2/images 499 " in lines[1]


def test_connections_beyond_the_cap_are_refused_with_a_503(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = tmp_path_factory.mktemp("cap") / "data"
    cap = 4
    env = {"IMAGEFORGE_MAX_CONNECTIONS": str(cap), "IMAGEFORGE_HEADER_TIMEOUT_SECONDS": "60"}
    with ServerProcess(data, "--no-worker", **env) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(cap)]
        try:
            for sock in held:  # each one accepted: a request on it is answered
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
                raw, waited = read_until_closed(extra)
            print(f"connection {cap + 1} of {cap}: refused after {waited:.3f} s")
            status, headers, body = split_answer(raw)
            assert status == 503 and headers["retry-after"] == "1"
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            held.pop().close()
            deadline = time.monotonic() + 10
            while True:  # the freed place is taken by the next connection
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as again:
                    again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    raw, _ = read_until_closed(again)
                if raw.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert raw.startswith(b"HTTP/1.1 200"), raw
        finally:
            for sock in held:
                sock.close()
        assert "refusing connections" in server.output()
