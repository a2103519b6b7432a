"""A real HTTP proxy on 127.0.0.1 in front of a real server, for the SDK's tests.

It forwards every request (streams included) and, where a test scripts it, fails on purpose:
answers 429/503 without forwarding, forwards and then answers 503 or drops the connection (the
answer is lost although the server acted), or hides `/openapi.json` (a server that lists no
extensions). It logs every request it saw, with whether it carried an API key.

A plain `http.server` rather than an ASGI app: dropping a connection without any answer is
something only a server that owns its sockets can do.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pytest

from imageforge.testing.processes import ServerProcess

FaultKind = Literal["status", "forward_then_status", "forward_then_drop", "drop"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 503
    retry_after: str | None = None


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    authorized: bool
    idempotency_key: str | None
    #: What the client was told: the status, or "dropped".
    outcome: str


@dataclass
class ProxyScript:
    #: (method, path prefix) → faults for the next matching requests, in order.
    faults: dict[tuple[str, str], deque[Fault]] = field(default_factory=dict)
    #: Answer `/openapi.json` with 404, like a server that documents no extensions.
    hide_openapi: bool = False
    #: Ids of the tasks the server created through this proxy.
    created: list[str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def fail(self, method: str, path: str, *faults: Fault) -> None:
        self.faults.setdefault((method, path), deque()).extend(faults)

    def take(self, method: str, path: str) -> Fault | None:
        for (fault_method, prefix), queue in self.faults.items():
            if fault_method == method and path.startswith(prefix) and queue:
                return queue.popleft()
        return None

    def requests_to(self, method: str, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(prefix)]


class FaultyProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.script = ProxyScript()
        self._lock = threading.Lock()
        self._upstream = httpx.Client(timeout=httpx.Timeout(30, read=120))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

            def do_HEAD(self) -> None:
                proxy._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._upstream.close()

    def _record(self, handler: BaseHTTPRequestHandler, outcome: str) -> None:
        """Before the answer goes out: a client that has its answer sees it logged."""
        parts = urlsplit(handler.path)
        with self._lock:
            self.script.seen.append(
                Seen(
                    method=handler.command,
                    path=parts.path,
                    query=parts.query,
                    authorized="authorization" in {k.lower() for k in handler.headers},
                    idempotency_key=handler.headers.get("idempotency-key"),
                    outcome=outcome,
                )
            )

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            fault = self.script.take(handler.command, path)
            hide = self.script.hide_openapi and path == "/openapi.json"
        if hide:
            self._record(handler, "404")
            self._answer(handler, 404, b'{"detail": "Not Found"}')
            return
        if fault is not None and fault.kind == "drop":
            self._drop(handler)
            return
        if fault is not None and fault.kind == "status":
            self._record(handler, str(fault.status))
            self._answer(handler, fault.status, _error_body(fault.status), fault.retry_after)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        request = self._upstream.build_request(
            handler.command, self.target + handler.path, headers=headers, content=body
        )
        response = self._upstream.send(request, stream=True)
        try:
            if fault is not None:  # the server acted; its answer never reaches the client
                response.read()
                self._note_created(path, response)
                if fault.kind == "forward_then_drop":
                    self._drop(handler)
                    return
                self._record(handler, str(fault.status))
                self._answer(handler, fault.status, _error_body(fault.status), fault.retry_after)
                return
            self._relay(handler, response, path)
        finally:
            response.close()

    def _relay(self, handler: BaseHTTPRequestHandler, response: httpx.Response, path: str) -> None:
        streaming = response.headers.get("content-type", "").startswith("text/event-stream")
        handler.send_response(response.status_code)
        for name, value in response.headers.multi_items():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-encoding":
                handler.send_header(name, value)
        if streaming:
            handler.send_header("Connection", "close")
            handler.end_headers()
            self._record(handler, str(response.status_code))
            for chunk in response.iter_raw():
                handler.wfile.write(chunk)
                handler.wfile.flush()
            handler.close_connection = True
            return
        content = response.read()
        self._note_created(path, response)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        self._record(handler, str(response.status_code))
        handler.wfile.write(content)

    def _note_created(self, path: str, response: httpx.Response) -> None:
        if path == "/v1/image2/images" and response.status_code == 200:
            task_id = json.loads(response.content)["id"]
            with self._lock:
                if task_id not in self.script.created:
                    self.script.created.append(task_id)

    def _answer(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        retry_after: str | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            handler.send_header("Retry-After", retry_after)
        handler.end_headers()
        handler.wfile.write(body)

    def _drop(self, handler: BaseHTTPRequestHandler) -> None:
        """Close the connection without a byte of answer."""
        handler.close_connection = True
        self._record(handler, "dropped")


def _error_body(status: int) -> bytes:
    message = {429: "Too many requests.", 503: "Overloaded, try again."}.get(status, "Failed.")
    kind = "rate_limit_error" if status == 429 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": str(status)}}).encode()


def serve_imageforge(factory: pytest.TempPathFactory, name: str) -> Iterator[ServerProcess]:
    """The body of a fixture: a real imageforge on a free port, stopped cleanly after."""
    with ServerProcess(factory.mktemp(name) / "data") as running:
        yield running
        assert running.terminate() == 0
