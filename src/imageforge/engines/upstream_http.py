"""What both upstream engines share about HTTP: one TLS context, a pinned aiohttp session per
upstream, the download of the image an upstream links to, and what such an image is.

An upstream's answer is not trusted to say where the worker may connect: a link can point
anywhere (a tampered answer, a gateway with a bug, an upstream that was not ours to trust).
So every session here resolves through `references.pinned_aiohttp.PinnedResolver` with the
upstream's download policy: the public internet, the upstream's own host and port (those of
its `base_url`, wherever that resolves) and its `download_allowlist`; the address checked is
the address connected to, as for a client's reference images. The upstream's key goes only
to its own origin (scheme, host and port), and no redirect is followed.

aiohttp rather than the reference fetcher's httpcore client: the relay downloads every image
it collects, in bursts as wide as its concurrency, and httpcore's pool scans every connection
it holds on each request (500 at once: 1.1 → 6.0 ms of worker CPU per task); the relay's
downloads also reuse the keep-alive connections of its API calls.
"""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import Callable, Iterable

import aiohttp
import yarl
from PIL import Image, UnidentifiedImageError

from imageforge.engines.base import IMAGE_CONTENT_TYPES, GeneratedImage
from imageforge.engines.config import UpstreamConfig
from imageforge.engines.upstream_errors import (
    UpstreamError,
    bad_answer_error,
    connection_error,
    timeout_error,
    too_large_error,
)
from imageforge.engines.upstreams import Upstream
from imageforge.references import AddressPolicy, OutboundError
from imageforge.references.pinned_aiohttp import PinnedResolver, check_host
from imageforge.references.transport import create_tls_context

log = logging.getLogger(__name__)

#: Idle connections are closed after this long: below the 5 s keep-alive of common servers
#: (uvicorn, gunicorn), so a request is not sent on a connection the server is closing.
KEEPALIVE_SECONDS = 4.0

_CHUNK_BYTES = 64 * 1024


class UpstreamHTTP:
    """One engine's HTTP set-up for its upstreams. `tls` builds the TLS context, once, when
    first needed (it loads the CA store: ~15 ms and ~1.5 MB); the openai engine passes its
    SDK's own, so verification is what the SDK would do.

    Each upstream's download policy is built here, so a bad `download_allowlist` stops the
    worker at start-up; its session is opened at first use."""

    def __init__(
        self,
        upstreams: Iterable[Upstream],
        *,
        user_agent: str,
        tls: Callable[[], ssl.SSLContext] = create_tls_context,
    ) -> None:
        self._user_agent = user_agent
        self._make_tls = tls
        self._tls: ssl.SSLContext | None = None
        self._policies = {upstream.name: download_policy(upstream) for upstream in upstreams}
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = self._make_tls()
        return self._tls

    def session(self, upstream: Upstream) -> aiohttp.ClientSession:
        """The upstream's session, a pool as wide as its concurrency limit, pinned to its
        download policy (its own origin is in it, so its API calls go through it too)."""
        session = self._sessions.get(upstream.name)
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=upstream.max_concurrency,
                    keepalive_timeout=KEEPALIVE_SECONDS,
                    ssl=self.tls_context(),
                    resolver=PinnedResolver(self._policies[upstream.name]),
                ),
                timeout=request_timeouts(upstream.config),
                headers={"User-Agent": self._user_agent},
            )
            self._sessions[upstream.name] = session
        return session

    async def aclose(self) -> None:
        """Close every session; later calls open new ones."""
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    async def download_image(self, upstream: Upstream, link: str) -> bytes:
        """The image at `link` (absolute, or relative to the upstream), up to the upstream's
        `max_image_bytes`, without following redirects."""
        config = upstream.config
        # yarl, aiohttp's own URL type: it parses a link in ~5 µs, httpx's parser in ~125.
        base = yarl.URL(upstream.base_url)
        try:
            url = base.join(yarl.URL(link))
        except (ValueError, TypeError):
            raise bad_answer_error(upstream.name, "linked its image at an invalid URL") from None
        if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
            raise bad_answer_error(upstream.name, "linked its image at a URL that is not http(s)")
        own_origin = (url.scheme, url.raw_host, url.port) == (base.scheme, base.raw_host, base.port)
        cap = config.max_image_bytes
        data = bytearray()
        try:
            await check_host(self._policies[upstream.name], url.raw_host, url.port)
            async with self.session(upstream).get(
                url,
                headers=upstream.authorization() if own_origin else None,
                allow_redirects=False,
            ) as reply:
                if not 200 <= reply.status < 300:
                    raise bad_answer_error(
                        upstream.name, f"answered {reply.status} to the image download"
                    )
                if (reply.content_length or 0) > cap:
                    raise too_large_error(upstream.name, cap)
                async for chunk in reply.content.iter_chunked(_CHUNK_BYTES):
                    data += chunk
                    if len(data) > cap:
                        raise too_large_error(upstream.name, cap)
        except OutboundError as exc:
            raise _refused(upstream, exc) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise timeout_error(upstream.name, config.request_timeout_seconds) from None
        except aiohttp.ClientError as exc:
            raise connection_error(upstream.name, exc) from None
        return bytes(data)


def request_timeouts(config: UpstreamConfig) -> aiohttp.ClientTimeout:
    """Per-step limits for one short call (submit, poll, download), as httpx counts them: a
    connection within `connect_timeout_seconds`, then no wait for a pool slot or for the next
    bytes longer than `request_timeout_seconds`. No limit on the whole: a large image may take
    longer than that to arrive, as long as it keeps arriving."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=config.request_timeout_seconds,
        sock_connect=config.connect_timeout_seconds,
        sock_read=config.request_timeout_seconds,
    )


def download_policy(upstream: Upstream) -> AddressPolicy:
    """Where an upstream's session may connect (see the module's docstring)."""
    base = yarl.URL(upstream.base_url)
    assert base.raw_host is not None and base.port is not None  # an http(s) base_url
    return AddressPolicy(
        upstream.config.download_allowlist,
        trusted_origins=[(base.raw_host, base.port)],
        setting=f"upstreams.{upstream.name}.download_allowlist",
    )


def _refused(upstream: Upstream, exc: OutboundError) -> UpstreamError:
    name = upstream.name
    if exc.kind == "unresolved":
        return connection_error(name, exc, detail=exc.reason)
    # The task's error is for the client, who chose none of this: the address stays in the
    # log. Not retryable: the next answer links the same way, and each try is paid for.
    log.warning("upstream %r linked its image where it may not: %s", name, exc.reason)
    return UpstreamError(
        f"upstream '{name}' linked its image to an address that is not allowed; if that is "
        f"its file server, add the host to upstreams.{name}.download_allowlist",
        upstream=name,
        retryable=False,
        code="upstream_bad_response",
    )


def upstream_image(
    upstream: Upstream, data: bytes, usage: dict[str, int] | None = None
) -> GeneratedImage:
    """What an engine returns for image bytes an upstream sent (checked by `describe_image`)."""
    content_type, width, height = describe_image(upstream.name, data)
    return GeneratedImage(
        data=data,
        content_type=content_type,
        width=width,
        height=height,
        usage=usage or {},
        upstream=upstream.name,
    )


def describe_image(upstream: str, data: bytes) -> tuple[str, int, int]:
    """Content type, width and height of an image an upstream returned, from its header."""
    try:
        with Image.open(io.BytesIO(data), formats=tuple(IMAGE_CONTENT_TYPES)) as image:
            return IMAGE_CONTENT_TYPES[image.format or ""], image.width, image.height
    except (UnidentifiedImageError, OSError, KeyError, ValueError) as exc:
        raise bad_answer_error(
            upstream, "returned data that is not a PNG, JPEG or WebP image"
        ) from exc
