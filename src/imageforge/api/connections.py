"""What the HTTP server allows a connection: its headers within a deadline, and at most
`max_connections` connections open per process.

uvicorn has neither. Its `timeout_keep_alive` runs only between requests (and every
received byte stops it), so a client trickling its headers, or a connection that sends
nothing at all, is held forever; `limit_concurrency` answers 503 only once a request's
headers are complete, so stalled connections still pile up. Both need the connection
itself, below ASGI, so they live in a subclass of uvicorn's httptools protocol. The
body's own timeout is the ASGI layer's (`body_guard.py`), where the body is read.

A reverse proxy in front (nginx, a cloud load balancer) is the usual protection at
scale; these limits hold where there is none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from imageforge.settings import Settings
from imageforge.wire import error_body

log = logging.getLogger(__name__)

#: How often a refused connection is logged at most: a flood must not flood the log.
REFUSAL_LOG_INTERVAL_SECONDS = 60.0


def _raw_answer(
    status: str, message: str, *, error_type: str, code: str, extra: bytes = b""
) -> bytes:
    """A whole HTTP response with the API's error body, written straight to the socket."""
    body = orjson.dumps(error_body(message, error_type=error_type, code=code))
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap; the
    limits are class attributes (see `guarded_protocol`)."""

    header_timeout: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1000
    _last_refusal_logged: ClassVar[float] = float("-inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._refused = False
        #: Between a request's first byte and the end of its headers.
        self._reading_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refused = True
            self._log_refusal()
            # Answered before the request is read: a client that reads before it has
            # finished writing sees the 503; the others see the connection close.
            transport.write(self._too_many_connections())
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        # The deadline counts from the request's first byte (or, for the first request,
        # from the connection): between requests uvicorn's keep-alive timeout applies. A
        # request pipelined behind one still being answered waits unread (uvicorn stops
        # reading meanwhile), so its deadline starts when that answer is complete.
        if not self._answering():
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._reading_headers:
            self._arm_header_deadline()

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        log.debug("closing a connection whose request headers took over %g s", self.header_timeout)
        self.transport.write(
            _raw_answer(
                "408 Request Timeout",
                f"headers: the request headers must arrive within {self.header_timeout:g} s",
                error_type="invalid_request_error",
                code="request_timeout",
            )
        )
        self.transport.close()

    def _too_many_connections(self) -> bytes:
        return _raw_answer(
            "503 Service Unavailable",
            f"this server holds at most {self.max_connections:,} connections; retry shortly",
            error_type="server_error",
            code="too_many_connections",
            extra=b"retry-after: 1\r\n",
        )

    @classmethod
    def _log_refusal(cls) -> None:
        now = time.monotonic()
        if now - cls._last_refusal_logged >= REFUSAL_LOG_INTERVAL_SECONDS:
            cls._last_refusal_logged = now
            log.warning(
                "refusing connections: %d are open (max_connections); further refusals "
                "in the next %g s are not logged",
                cls.max_connections,
                REFUSAL_LOG_INTERVAL_SECONDS,
            )


def guarded_protocol(*, header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=…)` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


def server_limits(settings: Settings) -> dict[str, Any]:
    """The `uvicorn.Config` arguments that bound what connections may hold."""
    return {
        "http": guarded_protocol(
            header_timeout=settings.header_timeout_seconds,
            max_connections=settings.max_connections,
        ),
        # uvicorn answers 503 to a request that arrives while this many connections or
        # requests are open, itself counted; the cap above keeps connections at most
        # `max_connections`, so this bounds the requests in flight, those whose client
        # has left included.
        "limit_concurrency": settings.max_connections + 1,
    }
