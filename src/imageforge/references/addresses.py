"""Which addresses an outbound request may reach: classification, allow-lists, resolution.

Every decision about where a packet goes is made on the RESOLVED address, once per connection
(see `transport.py`): getaddrinfo accepts `2130706433`, `0x7f.1` and friends, so a check on the
URL text proves nothing, and a check that resolves separately from the connect leaves a
DNS-rebinding window. ssrfguard's IANA table is kept as a second opinion in `_classify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from ssrfguard import DEFAULT_DENIED

from imageforge.errors import ConfigurationError
from imageforge.references.errors import OutboundError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

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


def normalise_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if not host.isascii():
        # A name the codec refuses cannot resolve either; leave it as is.
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    return host


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def parse_allowlist(
    entries: Sequence[str], *, setting: str
) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """Exact host names and IP networks; anything else is a configuration error naming
    `setting`, so a typo fails at start-up instead of silently allowing nothing."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in entries:
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
                f"{setting} entry {raw!r} is neither an IP address, a CIDR network nor an "
                f"exact host name"
            )
        hosts.add(normalise_host(entry))
    return frozenset(hosts), tuple(networks)


class AddressPolicy:
    """Where outbound requests may go: every globally routable address, plus what the
    operator allowed. The one place a hostname becomes addresses.

    `allowlist` holds exact host names (which may then resolve anywhere) and IP networks.
    `trusted_origins` are `(host, port)` pairs allowed whatever their addresses: an upstream's
    own origin for the images it links to, so an upstream on a private network works without
    opening every port of its host.
    """

    def __init__(
        self,
        allowlist: Sequence[str] = (),
        *,
        trusted_origins: Iterable[tuple[str, int]] = (),
        setting: str = "reference_allowlist",
    ) -> None:
        self.hosts, self.networks = parse_allowlist(allowlist, setting=setting)
        self.trusted_origins = frozenset(
            (normalise_host(host.removeprefix("[").removesuffix("]")), port)
            for host, port in trusted_origins
        )

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
        literal = _ip_literal(host)
        # A literal getaddrinfo would only echo back; odd spellings (`0x7f.1`) are no literal
        # to `ip_address` and go through getaddrinfo like names.
        addresses = [literal] if literal is not None else await self._lookup(host, port)
        name = normalise_host(host)
        host_allowed = name in self.hosts or (name, port) in self.trusted_origins
        for address in addresses:
            reason = self.refusal(address, host_allowed=host_allowed)
            if reason is not None:
                via = "" if literal is not None else f"; {host} resolves to it"
                raise OutboundError(
                    f"address {address} is not allowed ({reason}){via}", kind="refused"
                )
        return addresses

    @staticmethod
    async def _lookup(host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            # Only EAI_AGAIN says "try later"; NXDOMAIN and friends will not change on retry.
            raise OutboundError(
                f"host {host} does not resolve ({exc.strerror})",
                kind="unresolved",
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
            raise OutboundError(f"host {host} has no IPv4 or IPv6 address", kind="unresolved")
        return addresses
