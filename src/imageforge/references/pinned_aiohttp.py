"""The pinned connection for aiohttp, the upstream engines' HTTP stack.

aiohttp connects to exactly the addresses its resolver returns (TLS still verifies the host
name), so `PinnedResolver` pins a session as `transport.py` pins httpcore: every name is
resolved and checked through the same `AddressPolicy`, once per new connection (aiohttp may
cache the checked answer for its DNS TTL; it never connects to an unchecked one). aiohttp
does not ask its resolver about an IP literal, so `check_host` checks the URL's host before
the request; a connection already kept for that host was checked when it was opened.

Not imported by `references/__init__.py`: aiohttp comes with the upstream engines' extras.
"""

from __future__ import annotations

import socket
from ipaddress import ip_address

from aiohttp.abc import AbstractResolver, ResolveResult

from imageforge.references.addresses import AddressPolicy
from imageforge.references.errors import OutboundError

_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class PinnedResolver(AbstractResolver):
    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._policy.resolve(host, port)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=_NUMERIC,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


async def check_host(policy: AddressPolicy, host: str, port: int) -> None:
    """Refuse an IP-literal host the policy does not admit, and any odd numeric spelling of
    an IPv4 address (`127.1`, `2130706433`), which some aiohttp versions would hand to the
    operating system to interpret. Names are left to `PinnedResolver`."""
    bare = host.removeprefix("[").removesuffix("]").rstrip(".")
    try:
        ip_address(bare)
    except ValueError:
        try:
            socket.inet_aton(bare)
        except OSError:
            return
        raise OutboundError(f"host {host} is not a canonical IP address", kind="refused") from None
    await policy.resolve(bare, port)
