"""Fetch a task's reference images (`image_urls`) without becoming an SSRF proxy.

Own code rather than ssrfguard's httpx adapter: ssrfguard 0.4.1 pins connections soundly, but its
allow-list cannot say "this hostname may resolve anywhere" and its adapter imports private
httpx/httpcore modules; so a small httpcore network backend pins here, and ssrfguard's IANA
table is kept as a second opinion in `classify_address`.

Every decision about where a packet goes is made on the RESOLVED address, in the network
backend, once per connection: getaddrinfo accepts `2130706433`, `0x7f.1` and friends, so a check
on the URL text proves nothing, and a check that resolves separately from the connect leaves a
DNS-rebinding window.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
import ssl
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

import httpcore
import httpx
from PIL import Image, UnidentifiedImageError
from ssrfguard import DEFAULT_DENIED

from imageforge.engines.base import ReferenceImage
from imageforge.errors import ConfigurationError, ImageforgeError

__all__ = [
    "FetchLimits",
    "ReferenceFetchError",
    "ReferenceFetcher",
    "classify_address",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

USER_AGENT = "imageforge/0.1 (reference fetcher)"
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

# How many references of one task are in flight at once.
_CONCURRENCY = 4
# httpcore's read timeout is per socket read; the total deadline is what bounds a trickle.
_READ_TIMEOUT_S = 10.0
# A name with many addresses must not multiply the connect timeout without bound.
_MAX_CONNECT_ATTEMPTS = 3
_MAX_URL_LENGTH = 8192
_DISPLAY_URL_LENGTH = 200
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# 408 and 429 are the two 4xx answers that mean "not now" rather than "never".
_RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # decoded width*height
    total_timeout_s: float = 30.0  # per reference, whole fetch incl. redirects
    connect_timeout_s: float = 5.0
    max_redirects: int = 5


class ReferenceFetchError(ImageforgeError):
    """One reference could not be used. `retryable` is True only for transient network trouble.

    `index` counts from 0, as the JSON array does and as the create-time checks report it: the
    first URL is `image_urls[0]`.

    `url` is the display form (credentials removed, trimmed), never the raw input, so the error
    can be logged and shown to the client as is.
    """

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_reference"

    def __init__(self, *, index: int, url: str, reason: str, retryable: bool) -> None:
        self.index = index
        self.url = _display_url(url)
        self.reason = reason
        self.retryable = retryable
        super().__init__(
            f"image_urls[{index}] ({self.url}): {reason}", param=f"image_urls[{index}]"
        )


class _Refused(Exception):
    """Internal: why a fetch stopped. Raised from deep inside httpcore's call stack (the network
    backend), so it carries no index; `_fetch_one` turns it into a ReferenceFetchError."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


# --- address classification -----------------------------------------------------------------

# Specific before general: the first match names the reason. Whatever is not named here still
# has to pass `is_global` and ssrfguard's table, so this list is for good messages, not safety.
_V4_REASONS: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(cidr), reason)
    for cidr, reason in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "reserved"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "documentation"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_V6_REASONS: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(cidr), reason)
    for cidr, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),
        # Site-local is deprecated, and the stdlib calls it global; it is internal by design.
        ("fec0::/10", "private"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
    )
)

# IPv6 forms whose packets end up at an IPv4 address carried inside them. `is_global` answers
# about the wrapper (6to4 `2002:a9fe:a9fe::1` is "global"), so the embedded address is what gets
# classified; then the wrapper itself is either fine (mapped, NAT64, 6to4) or refused anyway.
_MAPPED = IPv6Network("::ffff:0:0/96")
_NAT64 = IPv6Network("64:ff9b::/96")
# Deprecated IPv4-compatible, SIIT-translated and RFC 8215 local-use NAT64: nobody's public
# image host, and where they lead depends on some local translator.
_LOCAL_WRAPPERS = (
    IPv6Network("::/96"),
    IPv6Network("::ffff:0:0:0/96"),
    IPv6Network("64:ff9b:1::/48"),
)


def _embedded_ipv4(address: IPv6Address) -> tuple[tuple[IPv4Address, ...], bool] | None:
    """The IPv4 destinations an IPv6 address carries, and whether the wrapper itself is
    acceptable once they are; None when it carries none."""
    # For 64:ff9b:1::/48 the IPv4 position depends on the operator's prefix length; the low 32
    # bits (a /96) is the usual layout and gives the better message when it is internal.
    low32 = IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _MAPPED or address in _NAT64:
        return (low32,), True
    if any(address in wrapper for wrapper in _LOCAL_WRAPPERS):
        return (low32,), False
    if address.sixtofour is not None:
        return (address.sixtofour,), True
    if address.teredo is not None:
        # Teredo is dead and relays through whatever both ends are: check both, then refuse.
        return address.teredo, False
    return None


def _classify(address: IPAddress) -> str | None:
    if isinstance(address, IPv6Address):
        # `::` and `::1` sit inside `::/96`, so their own names come before unwrapping.
        for special, name in _V6_REASONS[:2]:
            if address in special:
                return name
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner, wrapper_ok = embedded
            for v4 in inner:
                inner_reason = _classify(v4)
                if inner_reason is not None:
                    return inner_reason
            return None if wrapper_ok else "reserved"
        table: Iterable[tuple[IPNetwork, str]] = _V6_REASONS
    else:
        table = _V4_REASONS
    for network, reason in table:
        if address in network:
            return reason
    # Defence in depth: the stdlib's registry and ssrfguard's transcription of IANA's disagree
    # at the edges (5f00::/16, 192.88.99.0/24, 2001::/23 ...); refusing when either objects
    # costs nothing an image host would use.
    if address.is_multicast:
        return "multicast"
    if not address.is_global or DEFAULT_DENIED.classify(address).blocked:
        return "reserved"
    return None


def classify_address(address: str) -> str | None:
    """None if the IP address (string, v4 or v6) is globally routable; otherwise a short reason
    word: 'loopback', 'private', 'link-local', 'cgnat', 'multicast', 'reserved', 'unspecified'
    or 'documentation'. Raises ValueError for anything that is not an IP address; this never
    resolves names."""
    return _classify(ip_address(address))


# --- allow-list and the pinned connection ----------------------------------------------------


class _AddressPolicy:
    """The allow-list, and the one place a hostname becomes addresses."""

    def __init__(self, allowlist: Sequence[str]) -> None:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allowlist:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ip_network(entry.removeprefix("[").removesuffix("]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or "*" in entry or ":" in entry:
                raise ConfigurationError(
                    f"reference allow-list entry {raw!r} is neither an IP address, a CIDR "
                    f"network nor an exact host name"
                )
            hosts.add(_normalise_host(entry))
        self.hosts = frozenset(hosts)
        self.networks = tuple(networks)

    def refusal(self, address: IPAddress, *, host_allowed: bool) -> str | None:
        reason = _classify(address)
        # Not a unicast destination at all, whatever the operator allowed.
        if reason in ("unspecified", "multicast"):
            return reason
        if host_allowed:
            return None
        # No cross-family matching: `127.0.0.1` does not admit `::ffff:127.0.0.1`. That only
        # over-refuses, and getaddrinfo with AF_UNSPEC never returns mapped forms for a name.
        if any(address.version == net.version and address in net for net in self.networks):
            return None
        return reason

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of `host`, all checked; refuse the name if any one is refused.

        A name answering with both a public and an internal address is what rebinding looks
        like, so the whole name is refused rather than the bad answers dropped.
        """
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            # Only EAI_AGAIN says "try later"; NXDOMAIN and friends will not change on retry.
            raise _Refused(
                f"host {host} does not resolve ({exc.strerror})",
                retryable=exc.errno == socket.EAI_AGAIN,
            ) from None
        addresses: list[IPAddress] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ip_address(str(sockaddr[0]))
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise _Refused(f"host {host} has no IPv4 or IPv6 address")
        host_allowed = _normalise_host(host) in self.hosts
        literal = _is_ip_literal(host)
        for address in addresses:
            reason = self.refusal(address, host_allowed=host_allowed)
            if reason is not None:
                via = "" if literal else f"; {host} resolves to it"
                raise _Refused(f"address {address} is not allowed ({reason}){via}")
        return addresses


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks, then connects to the checked address itself.

    httpcore calls `start_tls(server_hostname=<origin host>)` on the stream we return, so TLS
    SNI and certificate checks stay on the hostname while the socket goes to the pinned IP.
    """

    def __init__(self, policy: _AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.resolve(host, port)
        last_error: Exception | None = None
        for address in addresses[:_MAX_CONNECT_ATTEMPTS]:
            try:
                # An IP literal: anyio connects to it without resolving anything again.
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
                continue
            peer = stream.get_extra_info("server_addr")
            if peer is None or ip_address(str(peer[0])) != address:
                await stream.aclose()
                raise _Refused(f"connection to {address} arrived at {peer!r} instead")
            return stream
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _Refused("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# --- URLs ---------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_USERINFO = re.compile(r"^([^:/?#]*:)?//[^/?#]*@")


def _normalise_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if not host.isascii():
        # A name the codec refuses cannot resolve either; leave it as is.
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    return host


def _is_ip_literal(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _display_url(url: str) -> str:
    """Credentials removed, control characters neutralised, trimmed: safe for logs and clients."""
    shown = _USERINFO.sub(lambda m: f"{m.group(1) or ''}//", url, count=1)
    shown = _CONTROL.sub("?", shown)
    if len(shown) > _DISPLAY_URL_LENGTH:
        shown = shown[: _DISPLAY_URL_LENGTH - 1] + "…"
    return shown


def _check_url(raw: str) -> httpx.URL:
    """Everything decidable from the text alone; where it points is decided at connect time."""
    if len(raw) > _MAX_URL_LENGTH:
        raise _Refused(f"URL is longer than {_MAX_URL_LENGTH} characters")
    if _CONTROL.search(raw):
        raise _Refused("URL contains control characters")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _Refused(f"not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https"):
        shown = repr(url.scheme) if url.scheme else "(none)"
        raise _Refused(f"scheme {shown} is not allowed; only http and https are")
    if url.userinfo:
        raise _Refused("credentials in the URL are not allowed")
    host = url.raw_host.decode("ascii")
    if not host:
        raise _Refused("URL has no host")
    if "%" in host:
        raise _Refused("host contains '%' (percent-encoding or an IPv6 zone id)")
    return url


def _is_tls_failure(exc: httpcore.ConnectError) -> bool:
    # httpcore wraps the ssl error as ConnectError(ssl_error), and its pool re-raises with
    # `from None`, so the argument is the reliable place to look.
    return any(
        isinstance(candidate, ssl.SSLError)
        for candidate in (*exc.args, exc.__cause__, exc.__context__)
    )


# --- decoding ---------------------------------------------------------------------------------

# `warnings.catch_warnings` swaps process-global filter state, so two threads using it at once
# can leave each other's filter installed or removed. Decodes are CPU-bound and short; serialise.
_DECODE_LOCK = threading.Lock()


def _decode(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    with _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # `formats=` keeps every other Pillow parser away from untrusted bytes.
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                # A JPEG carrying an MPO index is still a JPEG to everyone downstream.
                fmt = "JPEG" if image.format == "MPO" else str(image.format)
                width, height = image.size
                if width * height > max_pixels:
                    raise _Refused(f"image is {width}x{height}, more than {max_pixels} pixels")
                image.verify()
            # verify() leaves the image unusable and checks little outside PNG; a full decode
            # of the first frame is what catches truncation.
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                image.load()
        except _Refused:
            raise
        except UnidentifiedImageError:
            raise _Refused(f"not a {', '.join(ALLOWED_FORMATS)} image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _Refused("image declares too many pixels (decompression bomb)") from None
        except Exception as exc:
            # Untrusted bytes: Pillow raises OSError, SyntaxError, ValueError, struct.error,
            # zlib.error... and every one of them means the same thing here.
            raise _Refused(f"image is corrupt or truncated ({exc})") from None
    if fmt not in ALLOWED_FORMATS:
        raise _Refused(f"image format {fmt} is not allowed")
    return fmt, width, height


# --- the fetcher ------------------------------------------------------------------------------


class ReferenceFetcher:
    def __init__(
        self, *, allowlist: Sequence[str] = (), limits: FetchLimits = FetchLimits()
    ) -> None:
        self._limits = limits
        self._policy = _AddressPolicy(allowlist)
        # httpcore directly: httpx's transport takes a network backend only through a private
        # attribute, and httpcore never decodes Content-Encoding, so the byte cap counts what
        # came off the wire (httpx's `aiter_raw`). No keep-alive: every hop opens a connection
        # through the pinned backend, and a body longer than its Content-Length cannot
        # poison a reused one.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_keepalive_connections=0,
            max_connections=None,
            network_backend=_PinnedBackend(self._policy),
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def fetch_all(self, urls: Sequence[str]) -> list[ReferenceImage]:
        """Fetch every reference, in order. The first failure raises ReferenceFetchError and
        cancels the rest."""
        if not urls:
            return []
        # A URL that is wrong on its face fails the task before anything touches the network.
        for index, url in enumerate(urls):
            try:
                _check_url(url)
            except _Refused as refused:
                raise ReferenceFetchError(
                    index=index, url=url, reason=refused.reason, retryable=False
                ) from None

        gate = asyncio.Semaphore(_CONCURRENCY)

        async def bounded(index: int, url: str) -> ReferenceImage:
            async with gate:
                return await self._fetch_one(index, url)

        tasks = [asyncio.create_task(bounded(index, url)) for index, url in enumerate(urls)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch_one(self, index: int, url: str) -> ReferenceImage:
        limits = self._limits
        try:
            # httpcore has no total deadline; a trickling server would otherwise hold a worker
            # for as long as each single read stays under the read timeout.
            async with asyncio.timeout(limits.total_timeout_s):
                data, encoding = await self._download(url)
            try:
                fmt, width, height = await asyncio.to_thread(_decode, data, limits.max_pixels)
            except _Refused as refused:
                if not encoding:
                    raise
                raise _Refused(
                    f"{refused.reason} (the body was sent with Content-Encoding: {encoding}, "
                    f"which is never decoded)"
                ) from None
        except _Refused as refused:
            raise ReferenceFetchError(
                index=index, url=url, reason=refused.reason, retryable=refused.retryable
            ) from None
        except TimeoutError:
            raise ReferenceFetchError(
                index=index,
                url=url,
                reason=f"took longer than {limits.total_timeout_s:g} s",
                retryable=True,
            ) from None
        except httpcore.ConnectTimeout:
            raise ReferenceFetchError(
                index=index, url=url, reason="connect timed out", retryable=True
            ) from None
        except httpcore.TimeoutException:
            raise ReferenceFetchError(
                index=index, url=url, reason="read timed out", retryable=True
            ) from None
        except httpcore.ConnectError as exc:
            # A certificate that does not verify will not verify next time either.
            if _is_tls_failure(exc):
                raise ReferenceFetchError(
                    index=index, url=url, reason=f"TLS handshake failed ({exc})", retryable=False
                ) from None
            raise ReferenceFetchError(
                index=index, url=url, reason=f"could not connect ({exc})", retryable=True
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            # A reset, or a server that hung up mid-body: worth another attempt later.
            raise ReferenceFetchError(
                index=index, url=url, reason=f"connection failed ({exc})", retryable=True
            ) from None
        return ReferenceImage(url=url, data=data, format=fmt, width=width, height=height)

    async def _download(self, url: str) -> tuple[bytes, str]:
        """The final 2xx body, raw, and its Content-Encoding ("" for identity)."""
        max_redirects = self._limits.max_redirects
        current = url
        for hop in range(max_redirects + 1):
            try:
                outcome = await self._request(current)
            except _Refused as refused:
                if hop == 0:
                    raise
                raise _Refused(
                    f"redirect to {_display_url(current)}: {refused.reason}",
                    retryable=refused.retryable,
                ) from None
            if isinstance(outcome, httpx.URL):
                current = str(outcome)
                continue
            return outcome
        raise _Refused(f"more than {max_redirects} redirects")

    async def _request(self, url: str) -> tuple[bytes, str] | httpx.URL:
        """One hop: the body and its Content-Encoding, or where the server redirected to."""
        limits = self._limits
        target = _check_url(url)
        timeouts = {
            "connect": limits.connect_timeout_s,
            "read": min(_READ_TIMEOUT_S, limits.total_timeout_s),
            "write": min(_READ_TIMEOUT_S, limits.total_timeout_s),
            "pool": limits.total_timeout_s,
        }
        async with self._pool.stream(
            "GET",
            httpcore.URL(
                scheme=target.raw_scheme,
                host=target.raw_host,
                port=target.port,
                target=target.raw_path,
            ),
            headers=[
                (b"Host", target.netloc),
                (b"User-Agent", USER_AGENT.encode()),
                (b"Accept", b"image/png, image/jpeg, image/webp, image/gif"),
                # Anything else would have to be decompressed, after the byte cap.
                (b"Accept-Encoding", b"identity"),
                (b"Connection", b"close"),
            ],
            extensions={"timeout": timeouts},
        ) as response:
            headers = httpx.Headers(response.headers)
            status = response.status
            if status in _REDIRECT_STATUSES:
                location = headers.get("location")
                if not location:
                    raise _Refused(f"HTTP {status} redirect without a Location")
                try:
                    # Relative and protocol-relative Locations resolve against this hop.
                    return target.join(location)
                except (httpx.InvalidURL, ValueError, TypeError) as exc:
                    raise _Refused(f"redirect to an invalid URL ({exc})") from None
            if not 200 <= status < 300:
                raise _Refused(
                    f"server answered HTTP {status}",
                    retryable=status >= 500 or status in _RETRYABLE_4XX,
                )
            data = await self._read_capped(response, headers)
            encoding = headers.get("content-encoding", "").strip().lower()
            return data, "" if encoding in ("", "identity") else encoding

    async def _read_capped(self, response: httpcore.Response, headers: httpx.Headers) -> bytes:
        cap = self._limits.max_bytes
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > cap:
            raise _Refused(f"body of {declared} bytes is larger than the {cap}-byte limit")
        # Counted on the bytes off the wire: httpcore never decodes Content-Encoding, and a
        # Content-Length is a claim, not a limit.
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_stream():
            received += len(chunk)
            if received > cap:
                raise _Refused(f"body is larger than the {cap}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)
