"""Every request body is read through this guard, whichever route reads it and however
(our parser, FastAPI's, a form):

- larger than `max_bytes` (or, on a path of `larger_bodies`, that path's own limit: the
  uploads of `POST /v1/images/edits`) → 413, declared (Content-Length) or counted
  (chunked) alike, while the body streams in;
- no byte for `idle_timeout` seconds while the body is incomplete → 408;
- the client gone before the body ended → one info line, nothing sent.

The guard answers 413 and 408 itself, and whatever the route tried to answer
meanwhile is dropped, so the answer is the same wherever the reading stopped. Before
a 413 it reads and discards the rest of the body (up to `DRAIN_BYTES`, for at most
`DRAIN_SECONDS`): a client that sends its whole body before reading, as Python's
`http.client` does, otherwise meets a connection reset instead of the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Literal

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageforge.wire import error_body

log = logging.getLogger(__name__)

#: Most bytes read and discarded after a 413, and for how long at most.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 10.0

Refusal = Literal["too_large", "stalled"]


class _BodyRefused(Exception):
    """Raised from `receive` into the route: the guard answers instead."""


class BodyGuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        idle_timeout: float,
        larger_bodies: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        #: Exact paths whose bodies have a limit of their own.
        self.larger_bodies = dict(larger_bodies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # GET and HEAD carry no body any route reads: the poll, the hottest path, pays nothing.
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await _GuardedRequest(self, scope, receive, send).run()


class _GuardedRequest:
    """One request's body, as the route reads it."""

    def __init__(self, guard: BodyGuardMiddleware, scope: Scope, receive: Receive, send: Send):
        self.guard = guard
        self.max_bytes = guard.larger_bodies.get(scope["path"], guard.max_bytes)
        self.scope = scope
        self._receive = receive
        self._send = send
        self.received = 0
        self.complete = False
        self.refusal: Refusal | None = None
        self.disconnected = False
        self.response_started = False
        self.declared: int | None = None
        self.expects_continue = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    self.declared = int(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                self.expects_continue = True

    async def run(self) -> None:
        if self.declared is not None and self.declared > self.max_bytes:
            self.refusal = "too_large"
        else:
            try:
                await self.guard.app(self.scope, self.receive, self.send)
            except Exception:
                if self.refusal is None and not self.disconnected:
                    raise
            if self.disconnected and not self.complete:
                log.info(
                    "%s %s: the client went away after %d bytes of its body",
                    self.scope["method"],
                    self.scope["path"],
                    self.received,
                )
                return
        if self.refusal is not None and not self.response_started:
            if self.refusal == "too_large":
                await self._drain()
            await self._answer(self.refusal)

    async def receive(self) -> Message:
        if self.complete or self.refusal is not None:
            return await self._receive()
        try:
            async with asyncio.timeout(self.guard.idle_timeout):
                message = await self._receive()
        except TimeoutError:
            self.refusal = "stalled"
            raise _BodyRefused from None
        if message["type"] == "http.disconnect":
            self.disconnected = True
        elif message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.max_bytes:
                self.refusal = "too_large"
                raise _BodyRefused
        return message

    async def send(self, message: Message) -> None:
        # The guard answers a refused body itself, and nobody hears a client that left.
        if self.refusal is not None or self.disconnected:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _drain(self) -> None:
        """Read the rest of a refused body, within bounds, so the client gets to read the
        413. Not when the client waits for `100 Continue` before sending it, nor when
        what it declared is more than the bounds would read anyway."""
        if self.received == 0 and (
            self.expects_continue or (self.declared is not None and self.declared > DRAIN_BYTES)
        ):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                while not self.complete and self.received <= DRAIN_BYTES:
                    message = await self._receive()
                    if message["type"] != "http.request":
                        return
                    self.received += len(message.get("body", b""))
                    self.complete = not message.get("more_body", False)

    async def _answer(self, refusal: Refusal) -> None:
        if refusal == "too_large":
            status, code = 413, "payload_too_large"
            message = f"body: must be at most {self.max_bytes:,} bytes"
        else:
            status, code = 408, "request_timeout"
            message = (
                f"body: no data received for {self.guard.idle_timeout:g} s; "
                "send the whole body promptly"
            )
        body = orjson.dumps(
            error_body(message, error_type="invalid_request_error", code=code, param="body")
        )
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is not read (408) or not all read (413): the
                    # connection cannot carry another request.
                    (b"connection", b"close"),
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": body})
