"""The observing middleware: request id, one request line, request metrics, a span.

A pure ASGI middleware around the whole app (outside every other one), so that it sees
every answer, including those of endpoints served ahead of FastAPI's router, at the cost
of a few dictionary reads per request.

What it logs and counts an endpoint tells it through the ASGI scope's state dict (the
contract in docs/ARCHITECTURE.md, "Request observation"):

- `scope["state"]["route"]`: the route template (`/v1/result/{task_id}`); without it,
  the template of the route FastAPI matched (`scope["route"].path`), else `unmatched`;
- `scope["state"]["key_id"]`: the authenticated key (set by `api/deps.authenticate`);
- `scope["state"]["task_id"]`: the task the request created or read;
- `scope["state"]["prompt"]`: a create's prompt (logged only with `log_prompts`).

It writes `scope["state"]["request_id"]`: the client's `X-Request-Id` when it is 1 to 128
visible ASCII characters, else a new one; the response carries it back.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageforge.observability.request_log import RequestLog
from imageforge.observability.request_tally import RequestTally
from imageforge.observability.tracing import Tracing

_REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID = 128
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
#: The status logged and counted for a request its client abandoned before any answer
#: (nginx's convention; nothing is sent).
CLIENT_CLOSED_REQUEST = 499


def _incoming_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            if 0 < len(value) <= _MAX_REQUEST_ID and all(33 <= b <= 126 for b in value):
                return value.decode("ascii")
            return None
    return None


class RequestIds:
    """New request ids: this process's random prefix and a counter (22 hex characters),
    unique across processes and restarts without a system call per request."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"


def route_template(
    scope: Scope, state: dict[str, Any], static_paths: frozenset[str] = frozenset()
) -> str:
    """The route's template: the endpoint's word, FastAPI's matched route, else the path
    itself when it is one of the app's fixed paths (`/openapi.json`, `/docs`: Starlette's
    plain routes name no route), else `unmatched` (so unknown paths add no label)."""
    route = state.get("route")
    if route is not None:
        return str(route)
    matched = scope.get("route")
    path = getattr(matched, "path", None)
    if isinstance(path, str):
        return path
    requested: str = scope["path"]
    return requested if requested in static_paths else UNMATCHED


class ObserveMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        request_log: RequestLog | None,
        tally: RequestTally | None,
        tracing: Tracing | None = None,
        static_paths: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        """`static_paths`: the app's paths without parameters, asked for once, at the first
        request (the routes are all added by then)."""
        self.app = app
        self._static_source = static_paths
        self._static: frozenset[str] | None = None
        self._line = request_log.sink if request_log is not None else None
        self._prompts = request_log is not None and request_log.prompts
        self._tally = tally
        self._tracing = tracing
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope["headers"]) or self._ids.new()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        echoed = (_REQUEST_ID_HEADER, request_id.encode("ascii"))
        # Until an answer starts: a 500 if the app fails, a 499 if the client left first.
        status = 500
        started_answer = False
        disconnected = False

        async def receive_observed() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        def send_observed(message: Message) -> Awaitable[None]:
            # A plain function handing back send's own awaitable: no coroutine of ours
            # per message.
            nonlocal status, started_answer
            if message["type"] == "http.response.start":
                status = message["status"]
                started_answer = True
                message["headers"] = [*message.get("headers", ()), echoed]
            return send(message)

        span = self._tracing.request_span(scope) if self._tracing is not None else None
        try:
            await self.app(scope, receive_observed, send_observed)
        finally:
            duration = time.perf_counter() - started
            if disconnected and not started_answer:
                status = CLIENT_CLOSED_REQUEST
            static = self._static
            if static is None:
                source = self._static_source
                static = self._static = source() if source is not None else frozenset()
            route = route_template(scope, state, static)
            method = scope["method"]
            if method not in _METHODS:
                method = "other"
            if self._tally is not None or self._line is not None:
                record = (
                    time.time(),
                    method,
                    route,
                    status,
                    duration,
                    request_id,
                    state.get("key_id"),
                    state.get("task_id"),
                    state.get("prompt") if self._prompts else None,
                )
                if self._tally is not None:
                    self._tally.record(record)
                if self._line is not None:
                    self._line(record)
            if span is not None:
                assert self._tracing is not None
                self._tracing.end_request_span(span, route=route, status=status, state=state)
