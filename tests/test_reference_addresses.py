"""`classify_address` on its own: a corpus of address forms, classified without connecting."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageforge.references import classify_address

CORPUS: list[tuple[str, str | None]] = [
    # 0.0.0.0/8 "this network"
    ("0.0.0.0", "unspecified"),
    ("0.0.0.1", "reserved"),
    ("0.255.255.255", "reserved"),
    # 10/8
    ("10.0.0.0", "private"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    # 100.64/10 CGNAT: neither is_private nor a typical deny-list entry
    ("100.64.0.0", "cgnat"),
    ("100.64.0.1", "cgnat"),
    ("100.100.100.200", "cgnat"),
    ("100.127.255.255", "cgnat"),
    ("100.63.255.255", None),
    ("100.128.0.0", None),
    # 127/8
    ("127.0.0.1", "loopback"),
    ("127.0.0.2", "loopback"),
    ("127.1.2.3", "loopback"),
    ("127.255.255.254", "loopback"),
    # 169.254/16, the metadata endpoints included
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "link-local"),
    ("169.254.170.2", "link-local"),
    # 172.16/12, and its neighbours outside
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("172.15.255.255", None),
    ("172.32.0.0", None),
    # 192.0.0/24 IETF protocol assignments
    ("192.0.0.1", "reserved"),
    ("192.0.0.8", "reserved"),
    ("192.0.0.170", "reserved"),
    ("192.0.0.192", "reserved"),
    # documentation ranges
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.255", "documentation"),
    # 192.168/16
    ("192.168.0.1", "private"),
    ("192.168.255.255", "private"),
    # 198.18/15 benchmarking
    ("198.18.0.1", "reserved"),
    ("198.19.255.255", "reserved"),
    # 6to4 relay anycast, deprecated
    ("192.88.99.1", "reserved"),
    # multicast, reserved, broadcast
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("254.255.255.255", "reserved"),
    ("255.255.255.255", "reserved"),
    # IPv6 specials
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("0:0:0:0:0:0:0:1", "loopback"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fd00:ec2::254", "private"),
    ("fec0::1", "private"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("ff02::1", "multicast"),
    ("ff05::2", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001:db8:ffff::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "reserved"),
    ("5f00::1", "reserved"),
    ("2001:2::1", "reserved"),
    ("2001:10::1", "reserved"),
    # IPv4-mapped: `::ffff:127.0.0.1` has is_loopback False on 3.11 yet reaches 127.0.0.1
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("0:0:0:0:0:ffff:7f00:2", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:100.64.0.1", "cgnat"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:224.0.0.1", "multicast"),
    ("::ffff:8.8.8.8", None),
    # IPv4-compatible (deprecated) and SIIT-translated: embedded first, then refused anyway
    ("::127.0.0.1", "loopback"),
    ("::a9fe:a9fe", "link-local"),
    ("::8.8.8.8", "reserved"),
    ("::ffff:0:7f00:1", "loopback"),
    ("::ffff:0:808:808", "reserved"),
    # NAT64 well-known prefix: global wrapper, so the embedded address decides
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::10.0.0.1", "private"),
    ("64:ff9b::808:808", None),
    # NAT64 local-use prefix: somebody's own translator, never global
    ("64:ff9b:1::a9fe:a9fe", "link-local"),
    ("64:ff9b:1::808:808", "reserved"),
    # 6to4: `2002:a9fe:a9fe::1` reports is_global True
    ("2002:a9fe:a9fe::1", "link-local"),
    ("2002:0a00:0001::1", "private"),
    ("2002:7f00:1::", "loopback"),
    ("2002:c0a8:0101::1", "private"),
    ("2002:6440:1::1", "cgnat"),
    ("2002:808:808::1", None),
    # Teredo: server in bits 32-63, client bit-inverted in the low 32; both checked, then refused
    ("2001:0:7f00:1::1", "loopback"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation"),
    ("2001:0:808:808::f5ff:fffe", "private"),
    ("2001:0:808:808::f7f7:f7f7", "reserved"),
    # truly global
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("9.9.9.9", None),
    ("93.184.216.34", None),
    ("151.101.1.69", None),
    ("2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("2a00:1450:4001:82b::200e", None),
]


def test_the_corpus_is_large_and_unique() -> None:
    assert len(CORPUS) >= 60
    assert len({address for address, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("address", "expected"), CORPUS)
def test_classify_address(address: str, expected: str | None) -> None:
    assert classify_address(address) == expected


@pytest.mark.parametrize("text", ["localhost", "2130706433", "0x7f000001", "127.1", "", "[::1]"])
def test_only_ip_addresses_are_classified(text: str) -> None:
    # Never resolves: the fetcher classifies what getaddrinfo returned, not what was typed.
    with pytest.raises(ValueError):
        classify_address(text)


ipv4 = st.integers(min_value=0, max_value=2**32 - 1).map(IPv4Address)


@settings(database=None, max_examples=300)
@given(ipv4)
def test_mapped_nat64_and_6to4_forms_classify_as_their_ipv4(address: IPv4Address) -> None:
    expected = classify_address(str(address))
    embedded = int(address)
    assert classify_address(f"::ffff:{address}") == expected
    assert classify_address(str(IPv6Address((0x0064FF9B << 96) | embedded))) == expected
    assert classify_address(str(IPv6Address((0x2002 << 112) | (embedded << 80) | 1))) == expected


@settings(database=None, max_examples=300)
@given(ipv4, ipv4)
def test_teredo_is_never_global(server: IPv4Address, client: IPv4Address) -> None:
    teredo = (0x20010000 << 96) | (int(server) << 64) | (~int(client) & 0xFFFFFFFF)
    assert classify_address(str(IPv6Address(teredo))) is not None


@settings(database=None, max_examples=300)
@given(ipv4)
def test_an_ipv4_answer_is_global_only_if_the_stdlib_agrees(address: IPv4Address) -> None:
    if classify_address(str(address)) is None:
        assert address.is_global
        assert not address.is_multicast
