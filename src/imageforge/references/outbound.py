"""The one guarded HTTP client for URLs a client chose: reference images, callback URLs.

Each client holds one `AddressPolicy`; every connection it opens goes through the pinned
backend (`transport.py`), so the address a request reaches is the address that was checked.
`get` reads a body under a byte cap and follows redirects only when asked, checking every hop
again; `post` never follows one (a callback that redirects is answered as it stands).

httpcore directly: httpx's transport takes a network backend only through a private
attribute, and httpcore never decodes Content-Encoding, so a cap counts the bytes that came
off the wire (`Accept-Encoding: identity` is asked for, and nothing sent otherwise is
decompressed: a gzip bomb stays small). The upstream engines, many downloads a second on
their own aiohttp pools, pin those through the same policy instead (`pinned_aiohttp.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpcore
import httpx

from imageforge.references.addresses import AddressPolicy
from imageforge.references.errors import OutboundError, status_error
from imageforge.references.transport import PinnedBackend, create_tls_context

_MAX_URL_LENGTH = 8192
_DISPLAY_URL_LENGTH = 200
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Headers that belong to the first origin only: a redirect elsewhere does not get them.
_ORIGIN_BOUND_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_USERINFO = re.compile(r"^([^:/?#]*:)?//[^/?#]*@")


@dataclass(frozen=True)
class Timeouts:
    connect: float
    #: Each socket read or write, and the wait for a pooled connection.
    read: float
    #: The whole exchange, redirects included: what bounds a server that trickles bytes just
    #: fast enough for `read`. None: no bound beyond `read`.
    total: float | None = None


@dataclass(frozen=True)
class Fetched:
    body: bytes
    #: Content-Encoding as the server labelled the body ("" for identity); never decoded.
    content_encoding: str


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    #: The first bytes of the body, up to the caller's limit; the rest is never read.
    body: bytes


def display_url(url: str) -> str:
    """Credentials removed, control characters neutralised, trimmed: safe for logs and clients."""
    shown = _USERINFO.sub(lambda m: f"{m.group(1) or ''}//", url, count=1)
    shown = _CONTROL.sub("?", shown)
    if len(shown) > _DISPLAY_URL_LENGTH:
        shown = shown[: _DISPLAY_URL_LENGTH - 1] + "…"
    return shown


def check_url(raw: str) -> httpx.URL:
    """Everything decidable from the text alone; where it points is decided at connect time."""
    if len(raw) > _MAX_URL_LENGTH:
        raise _refused(f"URL is longer than {_MAX_URL_LENGTH} characters")
    if _CONTROL.search(raw):
        raise _refused("URL contains control characters")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _refused(f"not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https"):
        shown = repr(url.scheme) if url.scheme else "(none)"
        raise _refused(f"scheme {shown} is not allowed; only http and https are")
    if url.userinfo:
        raise _refused("credentials in the URL are not allowed")
    host = url.raw_host.decode("ascii")
    if not host:
        raise _refused("URL has no host")
    if "%" in host:
        raise _refused("host contains '%' (percent-encoding or an IPv6 zone id)")
    return url


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    """Scheme, host and port (the scheme's default when the URL names none)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.scheme, url.host, port


def _refused(reason: str) -> OutboundError:
    return OutboundError(reason, kind="refused")


class OutboundClient:
    """HTTP to addresses the policy admits, and nowhere else.

    No keep-alive: every request opens its connection through the pinned backend, and a
    body longer than its Content-Length cannot poison a reused connection. These are hosts
    nobody vouches for, reached a few times per task at most.
    """

    def __init__(
        self,
        policy: AddressPolicy | None = None,
        *,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._user_agent = user_agent.encode()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or create_tls_context(),
            max_keepalive_connections=0,
            max_connections=None,
            network_backend=PinnedBackend(policy or AddressPolicy()),
        )

    async def aclose(self) -> None:
        """Close every connection; the client opens new ones if used again."""
        await self._pool.aclose()

    async def get(
        self,
        url: str,
        *,
        max_bytes: int,
        timeouts: Timeouts,
        headers: Mapping[str, str] | None = None,
        max_redirects: int | None = None,
    ) -> Fetched:
        """The final 2xx body, raw, at most `max_bytes` of it; raises OutboundError.

        Up to `max_redirects` redirects are followed (more is an error), each hop checked
        like the first, and headers bound to the first origin (Authorization) are not sent
        elsewhere. With None, a redirect is an answer like any other non-2xx one."""
        async with _exchange(timeouts):
            return await self._follow(url, max_bytes, timeouts, headers or {}, max_redirects)

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        timeouts: Timeouts,
        headers: Mapping[str, str] | None = None,
        max_answer_bytes: int = 64 * 1024,
    ) -> Answer:
        """Send `body` and return whatever status came back, redirects included (never
        followed); only a refused address or a failed exchange raises OutboundError."""
        target = check_url(url)
        sent = {**(headers or {}), "Content-Length": str(len(body))}
        async with (
            _exchange(timeouts),
            self._request("POST", target, sent, timeouts, body) as response,
        ):
            answer = await _read_some(response, max_answer_bytes)
            return Answer(response.status, httpx.Headers(response.headers), answer)

    async def _follow(
        self,
        url: str,
        max_bytes: int,
        timeouts: Timeouts,
        headers: Mapping[str, str],
        max_redirects: int | None,
    ) -> Fetched:
        first = check_url(url)
        current = first
        follow = max_redirects is not None
        limit = max_redirects or 0
        for hop in range(limit + 1):
            sent = (
                headers
                if _origin(current) == _origin(first)
                else {k: v for k, v in headers.items() if k.lower() not in _ORIGIN_BOUND_HEADERS}
            )
            try:
                outcome = await self._get_once(current, sent, max_bytes, timeouts, follow)
            except OutboundError as refused:
                if hop == 0:
                    raise
                raise refused.within(f"redirect to {display_url(str(current))}") from None
            if isinstance(outcome, Fetched):
                return outcome
            try:
                current = check_url(str(outcome))
            except OutboundError as refused:
                raise refused.within(f"redirect to {display_url(str(outcome))}") from None
        raise _refused(f"more than {limit} redirects")

    async def _get_once(
        self,
        target: httpx.URL,
        headers: Mapping[str, str],
        max_bytes: int,
        timeouts: Timeouts,
        may_redirect: bool,
    ) -> Fetched | httpx.URL:
        """One hop: the body, or where the server redirected to."""
        async with self._request("GET", target, headers, timeouts) as response:
            status = response.status
            answered = httpx.Headers(response.headers)
            if status in _REDIRECT_STATUSES and may_redirect:
                location = answered.get("location")
                if not location:
                    raise _refused(f"HTTP {status} redirect without a Location")
                try:
                    # Relative and protocol-relative Locations resolve against this hop.
                    return target.join(location)
                except (httpx.InvalidURL, ValueError, TypeError) as exc:
                    raise _refused(f"redirect to an invalid URL ({exc})") from None
            if not 200 <= status < 300:
                raise status_error(status)
            body = await _read_capped(response, answered, max_bytes)
            encoding = answered.get("content-encoding", "").strip().lower()
            return Fetched(body, "" if encoding in ("", "identity") else encoding)

    def _request(
        self,
        method: str,
        target: httpx.URL,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        body: bytes | None = None,
    ) -> contextlib.AbstractAsyncContextManager[httpcore.Response]:
        sent = [
            (b"Host", target.netloc),
            # Anything else would have to be decompressed, after the byte cap.
            (b"Accept-Encoding", b"identity"),
            *((name.encode(), value.encode()) for name, value in headers.items()),
        ]
        if not any(name.lower() == "user-agent" for name in headers):
            sent.append((b"User-Agent", self._user_agent))
        sent.append((b"Connection", b"close"))
        pool_wait = timeouts.total if timeouts.total is not None else timeouts.read
        return self._pool.stream(
            method,
            httpcore.URL(
                scheme=target.raw_scheme,
                host=target.raw_host,
                port=target.port,
                target=target.raw_path,
            ),
            headers=sent,
            content=body,
            extensions={
                "timeout": {
                    "connect": timeouts.connect,
                    "read": timeouts.read,
                    "write": timeouts.read,
                    "pool": pool_wait,
                }
            },
        )


async def _read_capped(response: httpcore.Response, headers: httpx.Headers, cap: int) -> bytes:
    declared = headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > cap:
        raise OutboundError(
            f"body of {declared} bytes is larger than the {cap}-byte limit", kind="too_large"
        )
    # Counted on the bytes off the wire: a Content-Length is a claim, not a limit.
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_stream():
        received += len(chunk)
        if received > cap:
            raise OutboundError(f"body is larger than the {cap}-byte limit", kind="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_some(response: httpcore.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_stream():
        chunks.append(chunk[: limit - received])
        received += len(chunks[-1])
        if received >= limit:
            break
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def _exchange(timeouts: Timeouts) -> AsyncIterator[None]:
    """The whole exchange under its total deadline, httpcore's failures in our words."""
    try:
        async with asyncio.timeout(timeouts.total):
            yield
    except TimeoutError:
        raise OutboundError(
            f"took longer than {timeouts.total:g} s", kind="timeout", retryable=True
        ) from None
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise _failure(exc) from None


def _failure(exc: Exception) -> OutboundError:
    """httpcore's exceptions in our words; their text names no credentials (the URL never
    carries any: `check_url` refuses them)."""
    if isinstance(exc, httpcore.ConnectTimeout):
        return OutboundError("connect timed out", kind="timeout", retryable=True)
    if isinstance(exc, httpcore.TimeoutException):
        return OutboundError("read timed out", kind="timeout", retryable=True)
    if isinstance(exc, httpcore.ConnectError):
        # A certificate that does not verify will not verify next time either.
        if _is_tls_failure(exc):
            return OutboundError(f"TLS handshake failed ({exc})", kind="tls")
        return OutboundError(f"could not connect ({exc})", kind="network", retryable=True)
    # A reset, or a server that hung up mid-body: worth another attempt later.
    return OutboundError(f"connection failed ({exc})", kind="network", retryable=True)


def _is_tls_failure(exc: httpcore.ConnectError) -> bool:
    # httpcore wraps the ssl error as ConnectError(ssl_error), and its pool re-raises with
    # `from None`, so the argument is the reliable place to look.
    return any(
        isinstance(candidate, ssl.SSLError)
        for candidate in (*exc.args, exc.__cause__, exc.__context__)
    )
