"""Which IP addresses are reachable across the Internet: the callback (SSRF) policy's one rule.

A callback may go only to a globally reachable address. "Globally reachable" is the IANA
special-purpose address registries' column of that name (IPv4 and IPv6, RFC 6890 and its
updates), restated in ``SPECIAL_PURPOSE`` below: the most specific block holding an address
decides; an address in no block is global. Python's ``ipaddress.is_global`` follows the same
registries, but the 3.11 in use predates some entries (it calls ``192.0.0.0/24``,
``64:ff9b:1::/48``, ``2002::/16``, ``3fff::/20`` and ``5f00::/16`` global), so both must agree.
Multicast (not in the registries) is refused too, and an address that carries an IPv4 address
(IPv4-mapped, the NAT64 well-known prefix) is judged by that address as well.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# (block, globally reachable) from the IANA IPv4 and IPv6 Special-Purpose Address Registries;
# "N/A" (Teredo, 6to4, the deprecated 6to4 relay anycast) is taken as not reachable.
SPECIAL_PURPOSE: tuple[tuple[str, bool], ...] = (
    # IPv4
    ("0.0.0.0/8", False),  # "this network"
    ("10.0.0.0/8", False),  # private use
    ("100.64.0.0/10", False),  # shared address space (carrier-grade NAT)
    ("127.0.0.0/8", False),  # loopback
    ("169.254.0.0/16", False),  # link local
    ("172.16.0.0/12", False),  # private use
    ("192.0.0.0/24", False),  # IETF protocol assignments
    ("192.0.0.0/29", False),  # IPv4 service continuity prefix
    ("192.0.0.8/32", False),  # IPv4 dummy address
    ("192.0.0.9/32", True),  # port control protocol anycast
    ("192.0.0.10/32", True),  # traversal using relays around NAT anycast
    ("192.0.0.170/31", False),  # NAT64/DNS64 discovery
    ("192.0.2.0/24", False),  # documentation (TEST-NET-1)
    ("192.31.196.0/24", True),  # AS112-v4
    ("192.52.193.0/24", True),  # AMT
    ("192.88.99.0/24", False),  # deprecated 6to4 relay anycast (N/A)
    ("192.168.0.0/16", False),  # private use
    ("192.175.48.0/24", True),  # direct delegation AS112 service
    ("198.18.0.0/15", False),  # benchmarking
    ("198.51.100.0/24", False),  # documentation (TEST-NET-2)
    ("203.0.113.0/24", False),  # documentation (TEST-NET-3)
    ("240.0.0.0/4", False),  # reserved
    ("255.255.255.255/32", False),  # limited broadcast
    # IPv6
    ("::1/128", False),  # loopback
    ("::/128", False),  # unspecified
    ("::ffff:0:0/96", False),  # IPv4-mapped
    ("64:ff9b::/96", True),  # IPv4-IPv6 translation (its IPv4 address is judged too)
    ("64:ff9b:1::/48", False),  # IPv4-IPv6 translation, local use
    ("100::/64", False),  # discard-only
    ("100:0:0:1::/64", False),  # dummy IPv6 prefix
    ("2001::/23", False),  # IETF protocol assignments
    ("2001::/32", False),  # Teredo (N/A)
    ("2001:1::1/128", True),  # port control protocol anycast
    ("2001:1::2/128", True),  # traversal using relays around NAT anycast
    ("2001:1::3/128", True),  # DNS-SD service registration protocol anycast
    ("2001:2::/48", False),  # benchmarking
    ("2001:3::/32", True),  # AMT
    ("2001:4:112::/48", True),  # AS112-v6
    ("2001:10::/28", False),  # deprecated ORCHID
    ("2001:20::/28", True),  # ORCHIDv2
    ("2001:30::/28", True),  # drone remote ID protocol entity tags
    ("2001:db8::/32", False),  # documentation
    ("2002::/16", False),  # 6to4 (N/A)
    ("2620:4f:8000::/48", True),  # direct delegation AS112 service
    ("3fff::/20", False),  # documentation
    ("5f00::/16", False),  # segment routing (SRv6) SIDs
    ("fc00::/7", False),  # unique local
    ("fe80::/10", False),  # link-local unicast
)
_BLOCKS = sorted(
    ((ipaddress.ip_network(block), reachable) for block, reachable in SPECIAL_PURPOSE),
    key=lambda item: item[0].prefixlen,
    reverse=True,  # most specific first
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def registry_says_global(ip: IPAddress) -> bool:
    """The registries' "globally reachable" for ``ip``: its most specific block's, else True."""
    for network, reachable in _BLOCKS:
        if ip.version == network.version and ip in network:
            return reachable
    return True


@lru_cache(maxsize=4096)
def is_public(ip: IPAddress) -> bool:
    """``ip`` is a unicast address reachable across the Internet, by the registries and by
    Python's ``is_global``; an embedded IPv4 address (mapped, NAT64) must be public as well."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return is_public(ip.ipv4_mapped)
    if ip.is_multicast or not ip.is_global or not registry_says_global(ip):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64:
        return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return True


def address_is_public(text: str) -> bool:
    """:func:`is_public` of an address written as text (an IPv6 zone ``%eth0`` is dropped)."""
    return is_public(ipaddress.ip_address(text.split("%", 1)[0]))
