"""The pinned connection: resolve and check once, then connect to the checked address itself.

Own code rather than ssrfguard's httpx adapter: ssrfguard 0.4.1 pins connections soundly, but
its allow-list cannot say "this hostname may resolve anywhere" and its adapter imports private
httpx/httpcore modules; so a small httpcore network backend pins here.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from ipaddress import ip_address

import httpcore
import httpx

from imageforge.references.addresses import AddressPolicy
from imageforge.references.errors import OutboundError

# A name with many addresses must not multiply the connect timeout without bound.
_MAX_CONNECT_ATTEMPTS = 3


def create_tls_context() -> ssl.SSLContext:
    """httpx's verification: certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR when set.
    Building one loads the CA store (~15 ms, ~1.5 MB), so holders share theirs."""
    return httpx.create_ssl_context()


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks through the policy, then connects to the checked address.

    httpcore calls `start_tls(server_hostname=<origin host>)` on the stream we return, so TLS
    SNI and certificate checks stay on the hostname while the socket goes to the pinned IP.
    """

    def __init__(self, policy: AddressPolicy) -> None:
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
                raise OutboundError(
                    f"connection to {address} arrived at {peer!r} instead", kind="refused"
                )
            return stream
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundError("unix sockets are not allowed", kind="refused")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
