"""Real HTTP upstreams on 127.0.0.1 for the upstream engines' tests and benchmark.

- `FakeImagesAPI`: a small OpenAI-style Images API (`POST /v1/images/generations`, JSON, and
  `POST /v1/images/edits`, multipart) answering b64 PNGs of the requested size with usage,
  whose answers a test scripts call by call (`Reply`: status, Retry-After, delay).
- `ImageforgeUpstream`: a second imageforge (the real app, worker included) behind a counting
  and fault-injecting wrapper, for the relay engine.
- `ServerThread`: either one served by uvicorn in a background thread on a pre-bound port.

- `FakeTaskAPI`: a GPT Image 2 task API that finishes every task after a fixed delay.
- `Sentinel`: a TCP listener on a loopback address nobody allowed, counting every connection:
  an outbound guard that works leaves it at 0.

`python -m tests.upstream_servers --port N --delay 2 [--api tasks]` runs the fake Images API
(or the task API) alone: the benchmark's upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.parser
import email.policy
import io
import json
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from PIL import Image

from imageforge.engines.base import EngineError, GeneratedImage, GenerationRequest
from imageforge.engines.offline import render_png
from imageforge.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@lru_cache(maxsize=32)
def solid_png(width: int, height: int, colour: tuple[int, int, int] = (40, 90, 160)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG", compress_level=1)
    return out.getvalue()


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode().lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


# --------------------------------------------------------------------------------------------
# OpenAI-style Images API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """How the fake answers one call."""

    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None
    message: str = "scripted failure"
    #: A raw body instead of the usual JSON (e.g. not JSON at all).
    body: bytes | None = None


@dataclass(frozen=True)
class Call:
    path: str
    authorization: str
    #: JSON fields (generations) or form fields (edits).
    fields: dict[str, Any]
    #: (field name, filename, content type, size in bytes) of each uploaded file.
    files: tuple[tuple[str, str, str, int], ...] = ()
    #: time.monotonic() when the call arrived.
    at: float = 0.0


@dataclass
class FakeImagesAPI:
    """The fake's state; the ASGI app is `self` (call it with scope, receive, send)."""

    default: Reply = field(default_factory=Reply)
    record: bool = True
    #: Set by `serve_images_api`.
    base_url: str = ""
    script: deque[Reply] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    #: Wall-clock (time.time()) arrival and answer of each call, for the benchmark.
    timings: list[tuple[float, float]] = field(default_factory=list)
    #: (path, Authorization header) of each GET /files/… download.
    downloads: list[tuple[str, str]] = field(default_factory=list)
    #: Client ports seen: how many connections the callers opened.
    client_ports: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def push(self, *replies: Reply) -> None:
        """Answer the next calls with these replies, in order, then with `default` again."""
        with self._lock:
            self.script.extend(replies)

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path.startswith("/files/") and path.endswith(".png"):
            # Reference images for the relay tests, linked images for the openai ones:
            # /files/WxH.png
            with self._lock:
                self.downloads.append((path, _headers(scope).get("authorization", "")))
            width, _, height = path.removeprefix("/files/").removesuffix(".png").partition("x")
            await _respond(
                send, 200, solid_png(int(width), int(height), (200, 60, 40)), "image/png"
            )
            return
        if method == "GET" and path == "/stats":
            with self._lock:
                stats = {
                    "completed": self.completed,
                    "max_in_flight": self.max_in_flight,
                    "timings": self.timings,
                    "connections": len(self.client_ports),
                }
            await _respond(send, 200, json.dumps(stats).encode(), "application/json")
            return
        if method != "POST" or path not in ("/v1/images/generations", "/v1/images/edits"):
            await _respond(
                send, 404, b'{"error": {"message": "no such route"}}', "application/json"
            )
            return
        body = await _read_body(receive)
        headers = _headers(scope)
        fields, files = _parse_request(headers.get("content-type", ""), body)
        with self._lock:
            reply = self.script.popleft() if self.script else self.default
            if self.record:
                call = Call(path, headers.get("authorization", ""), fields, files, time.monotonic())
                self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.client_ports.add((scope.get("client") or ("", 0))[1])
        arrived = time.time()
        try:
            if reply.delay:
                await self._sleep(reply.delay)
            await self._answer(send, reply, fields, files)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.completed += 1
                self.timings.append((arrived, time.time()))

    async def _sleep(self, seconds: float) -> None:
        # Interruptible, so stopping the server never waits out a "slow upstream" delay.
        if self._stopping is None:
            self._stopping = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _answer(
        self,
        send: Send,
        reply: Reply,
        fields: dict[str, Any],
        files: tuple[tuple[str, str, str, int], ...],
    ) -> None:
        headers = {"retry-after": reply.retry_after} if reply.retry_after else {}
        if reply.body is not None:
            await _respond(send, reply.status, reply.body, "text/plain", headers)
            return
        if reply.status != 200:
            error = {"error": {"message": reply.message, "type": "test", "code": None}}
            await _respond(
                send, reply.status, json.dumps(error).encode(), "application/json", headers
            )
            return
        width, _, height = str(fields.get("size", "1024x1024")).partition("x")
        png = solid_png(int(width), int(height))
        prompt = str(fields.get("prompt", ""))
        usage = {
            "input_tokens": 10 + len(prompt) // 4 + 100 * len(files),
            "output_tokens": 1000,
            "input_tokens_details": {"image_tokens": 100 * len(files), "text_tokens": 10},
        }
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]  # type: ignore[operator]
        payload = {
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(png).decode()}],
            "output_format": fields.get("output_format", "png"),
            "usage": usage,
        }
        await _respond(send, 200, json.dumps(payload).encode(), "application/json")

    def stop(self) -> None:
        """Cut every pending delay short (called from another thread)."""
        if self._stopping is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)


def _parse_request(
    content_type: str, body: bytes
) -> tuple[dict[str, Any], tuple[tuple[str, str, str, int], ...]]:
    if content_type.startswith("application/json"):
        parsed = json.loads(body or b"{}")
        return (parsed if isinstance(parsed, dict) else {}), ()
    if not content_type.startswith("multipart/form-data"):
        return {}, ()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, Any] = {}
    files: list[tuple[str, str, str, int]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        filename = part.get_filename()
        if filename is not None:
            files.append((name, filename, part.get_content_type(), len(payload)))
        else:
            fields[name] = payload.decode()
    return fields, tuple(files)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --------------------------------------------------------------------------------------------
# A GPT Image 2 task API that finishes every task after a fixed delay (the relay's benchmark)
# --------------------------------------------------------------------------------------------


@dataclass
class FakeTaskAPI:
    """`POST /v1/image2/images` accepts at once; `GET /v1/result/{id}` answers processing until
    `delay` seconds after the submission, then completed with a link to a PNG of the size
    asked for (`/files/WxH.png`). Cheap on purpose: it shares the machine with the worker
    being measured, where a second imageforge would compete with it for the CPU."""

    delay: float = 0.0
    #: Where finished tasks link their image: "" for this server (a relative link), or another
    #: origin such as a file host.
    link_base: str = ""
    submissions: int = 0
    polls: int = 0
    downloads: int = 0
    #: id → (time.monotonic() at submission, wall-clock submission, size).
    tasks: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    _next: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path == "/v1/image2/images":
            fields = json.loads(await _read_body(receive) or b"{}")
            self._next += 1
            self.submissions += 1
            task_id = f"image_fake-{self._next}"
            self.tasks[task_id] = (time.monotonic(), time.time(), str(fields.get("size", "")))
            body = {"id": task_id, "object": "image", "status": "queued"}
            await _respond(send, 200, json.dumps(body).encode(), "application/json")
        elif method == "GET" and path.startswith("/v1/result/"):
            self.polls += 1
            task = self.tasks.get(path.removeprefix("/v1/result/"))
            if task is None:
                await _respond(
                    send, 404, b'{"error": {"message": "no such task"}}', "application/json"
                )
                return
            submitted, _, size = task
            body = {"id": path.removeprefix("/v1/result/"), "status": "processing"}
            if time.monotonic() - submitted >= self.delay:
                link = f"{self.link_base}/files/{size}.png"
                body = {**body, "status": "completed", "image_url": link}
            await _respond(send, 200, json.dumps(body).encode(), "application/json")
        elif method == "GET" and path.startswith("/files/") and path.endswith(".png"):
            self.downloads += 1
            width, _, height = path.removeprefix("/files/").removesuffix(".png").partition("x")
            await _respond(send, 200, solid_png(int(width), int(height)), "image/png")
        elif method == "GET" and path == "/stats":
            # (submitted, finished) per task, wall clock, as FakeImagesAPI reports its calls.
            timings = [(wall, wall + self.delay) for _, wall, _ in self.tasks.values()]
            stats = {
                "completed": self.downloads,
                "submissions": self.submissions,
                "polls": self.polls,
                "max_in_flight": _max_overlap(timings),
                "timings": timings,
                "connections": None,
            }
            await _respond(send, 200, json.dumps(stats).encode(), "application/json")
        else:
            await _respond(
                send, 404, b'{"error": {"message": "no such route"}}', "application/json"
            )


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


# --------------------------------------------------------------------------------------------
# A second imageforge as the relay's upstream
# --------------------------------------------------------------------------------------------


class HeldEngine:
    """The offline renderer behind a gate the test opens: a slow upstream on demand.

    Loaded by the upstream imageforge as the plugin `tests.upstream_servers:HeldEngine`; the
    gate is found by the upstream's data dir, so each test's upstream has its own.
    """

    name: ClassVar[str] = "held"
    gates: ClassVar[dict[str, threading.Event]] = {}

    def __init__(self, settings: Settings) -> None:
        self._gate = self.gates.setdefault(str(settings.data_dir), threading.Event())

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        if "REJECT" in request.prompt:
            raise EngineError(f"content policy violation in {request.prompt!r}", retryable=False)
        # A threading.Event, since the test thread opens it; so poll it from the loop.
        while not self._gate.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        # In a thread, not the offline engine's process pool: no pool start-up per test.
        data = await asyncio.to_thread(render_png, request)
        return GeneratedImage(
            data=data, content_type="image/png", width=request.width, height=request.height
        )

    async def aclose(self) -> None:
        return None


@dataclass
class Faults:
    """What the wrapper does to the next requests before the real app sees them."""

    submits: deque[Reply] = field(default_factory=deque)
    polls: deque[Reply] = field(default_factory=deque)


class CountingWrapper:
    """Counts the relay-facing requests and injects scripted failures in front of `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.faults = Faults()
        self.idempotency_keys: list[str] = []
        #: JSON bodies of the submissions that reached the app.
        self.submitted: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def submissions(self) -> int:
        with self._lock:
            return self.counts["submit"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = None
        if scope["method"] == "POST" and scope["path"] == "/v1/image2/images":
            kind = "submit"
        elif scope["method"] == "GET" and scope["path"].startswith("/v1/result/"):
            kind = "poll"
        reply = None
        if kind is not None:
            with self._lock:
                queue = self.faults.submits if kind == "submit" else self.faults.polls
                reply = queue.popleft() if queue else None
                self.counts[f"{kind}_fault" if reply else kind] += 1
                key = _headers(scope).get("idempotency-key")
                if kind == "submit" and key and not reply:
                    self.idempotency_keys.append(key)
        if reply is not None:
            headers = {"retry-after": reply.retry_after} if reply.retry_after else {}
            body = json.dumps({"error": {"message": reply.message}}).encode()
            await _respond(send, reply.status, body, "application/json", headers)
            return
        if kind == "submit":
            raw = await _read_body(receive)
            with self._lock:
                self.submitted.append(json.loads(raw or b"{}"))
            receive = _replay(raw)
        await self.app(scope, receive, send)


def _replay(body: bytes) -> Receive:
    """A `receive` that hands the app a body already read, then waits for a disconnect."""
    sent = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    return receive


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


class ServerThread:
    """Serve an ASGI app with uvicorn in a daemon thread, on a port bound before start."""

    def __init__(self, app: ASGIApp, *, lifespan: str = "on") -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            lifespan=lifespan,  # type: ignore[arg-type]
            log_level="warning",
            access_log=False,
            ws="none",
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"upstream:{self.port}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"upstream server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("upstream server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        stop = getattr(self.app, "stop", None)
        if callable(stop):
            stop()
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


class Sentinel:
    """Accepts TCP connections on `host:port` and counts them, answering nothing."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"sentinel:{host}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@contextlib.contextmanager
def sentinel_beside(base_url: str, host: str = "127.0.0.2") -> Iterator[Sentinel]:
    """A sentinel on `host` at the port of `base_url`'s server: a link that swaps only the
    address of the server lands on it."""
    sentinel = Sentinel(host, int(base_url.rsplit(":", 1)[1].split("/", 1)[0]))
    try:
        yield sentinel
    finally:
        sentinel.close()


@contextlib.contextmanager
def serve_task_api(**options: Any) -> Iterator[tuple[FakeTaskAPI, str]]:
    """A FakeTaskAPI on a real port, and its base URL, for the duration of the block."""
    api = FakeTaskAPI(**options)
    server = ServerThread(api).start()
    try:
        yield api, server.base_url
    finally:
        server.stop()


@contextlib.contextmanager
def serve_images_api(**options: Any) -> Iterator[FakeImagesAPI]:
    """A FakeImagesAPI on a real port for the duration of the block."""
    api = FakeImagesAPI(**options)
    server = ServerThread(api).start()
    api.base_url = server.base_url
    try:
        yield api
    finally:
        server.stop()


class ImageforgeUpstream:
    """A second imageforge on a real port: the upstream of the relay engine."""

    def __init__(self, settings: Settings, api_key: str) -> None:
        from imageforge.api.app import create_app

        self.settings = settings
        self.api_key = api_key
        self.gate = HeldEngine.gates.setdefault(str(settings.data_dir), threading.Event())
        self.gate.set()
        self.wrapper = CountingWrapper(create_app(settings))  # type: ignore[arg-type]
        self.server = ServerThread(self.wrapper)
        self.base_url = self.server.base_url

    @classmethod
    async def start(cls, data_dir: Path, **overrides: Any) -> ImageforgeUpstream:
        from imageforge.keyring import create_api_key
        from imageforge.store import open_store, upgrade_database
        from tests.conftest import make_settings

        values: dict[str, Any] = {
            "engine": "tests.upstream_servers:HeldEngine",
            "reference_allowlist": ["127.0.0.1"],
            "worker_concurrency": 16,
            "poll_interval_seconds": 0.05,
        }
        values.update(overrides)
        settings = make_settings(data_dir, **values)
        # The key is made before the server starts, so its key cache has it from the start.
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(upgrade_database, settings.resolved_database_url)
        store = await open_store(settings.resolved_database_url)
        try:
            _, secret = await create_api_key(store, "relay")
        finally:
            await store.close()
        upstream = cls(settings, secret)
        await asyncio.to_thread(upstream.server.start)
        return upstream

    def hold(self) -> None:
        """Generations wait until `release()`."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def stop(self) -> None:
        self.gate.set()
        await asyncio.to_thread(self.server.stop)
        HeldEngine.gates.pop(str(self.settings.data_dir), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per image")
    parser.add_argument(
        "--api", choices=("images", "tasks"), default="images", help="which API to serve"
    )
    args = parser.parse_args()
    app: ASGIApp = (
        FakeImagesAPI(default=Reply(delay=args.delay), record=False)
        if args.api == "images"
        else FakeTaskAPI(delay=args.delay)
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="none",
        loop="uvloop",
        http="httptools",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
