"""/metrics on a port of its own (`metrics_port`), served from a thread.

A thread rather than the event loop: a scrape is then answered even while the loop is
busy, and the API's port carries no scrape traffic at all. The queue depth is the one
part read from the store, on the loop (`refresh`), before each scrape.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from imageforge.observability.metrics import CONTENT_TYPE, exposition

log = logging.getLogger(__name__)

#: How long a scrape waits for the store's queue depth before answering without it.
REFRESH_TIMEOUT_SECONDS = 2.0


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    import hmac

    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.encode()
    )


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None,
        collectors: tuple[Any, ...] = (),
        refresh: Callable[[], Coroutine[Any, Any, None]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self._answer(404, b"not found\n", "text/plain")
                    return
                if token is not None and not bearer_token_matches(
                    self.headers.get("Authorization"), token
                ):
                    self._answer(401, b"the metrics token is required\n", "text/plain")
                    return
                self._answer(200, server.scrape(), CONTENT_TYPE)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not requests of the API; they are not logged

        self._collectors = collectors
        self._refresh = refresh
        self._loop = loop
        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="metrics server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def scrape(self) -> bytes:
        if self._refresh is not None and self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._refresh(), self._loop)
            try:
                future.result(REFRESH_TIMEOUT_SECONDS)
            except Exception as exc:
                future.cancel()
                log.warning("queue depth not read for /metrics: %s", exc)
        return exposition(*self._collectors)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
