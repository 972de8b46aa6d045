"""Callbacks go only to globally reachable addresses (production defaults): one row per block of
the IANA special-purpose registries (IPv4 and IPv6), and a few public addresses that must pass."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from cht_interop.kit.addresses import SPECIAL_PURPOSE, address_is_public
from cht_interop.ltfu.callbacks import check_callback_address
from cht_interop.services import Services
from tests.hardening.conftest import assert_outcome, row_counts
from tests.ltfu.conftest import endpoint_body

# address -> reachable across the Internet? (comment: the registry block it is in)
CASES = {
    "8.8.8.8": True,
    "1.1.1.1": True,
    "0.1.2.3": False,  # "this network"
    "10.1.2.3": False,  # private use
    "100.64.0.1": False,  # shared address space (carrier-grade NAT): Python's is_private misses it
    "100.127.255.254": False,
    "100.128.0.1": True,  # just past it
    "127.0.0.1": False,  # loopback
    "169.254.169.254": False,  # link local (cloud metadata)
    "172.16.5.4": False,  # private use
    "172.32.0.1": True,
    "192.0.0.8": False,  # IPv4 dummy address
    "192.0.0.9": True,  # PCP anycast: globally reachable
    "192.0.0.100": False,  # IETF protocol assignments: Python 3.11's is_global says True
    "192.0.0.170": False,  # NAT64/DNS64 discovery
    "192.0.2.1": False,  # TEST-NET-1
    "192.88.99.1": False,  # deprecated 6to4 relay anycast
    "192.168.1.1": False,  # private use
    "198.18.0.1": False,  # benchmarking
    "198.51.100.1": False,  # TEST-NET-2
    "203.0.113.9": False,  # TEST-NET-3
    "224.0.0.1": False,  # multicast
    "240.0.0.1": False,  # reserved
    "255.255.255.255": False,  # limited broadcast
    "2606:4700:4700::1111": True,
    "::1": False,  # loopback
    "::": False,  # unspecified
    "::ffff:10.0.0.1": False,  # IPv4-mapped: judged as 10.0.0.1
    "::ffff:8.8.8.8": True,
    "64:ff9b::808:808": True,  # NAT64 of 8.8.8.8
    "64:ff9b::a00:1": False,  # NAT64 of 10.0.0.1
    "64:ff9b:1::1": False,  # local-use NAT64: Python 3.11's is_global says True
    "100::1": False,  # discard-only
    "2001::1": False,  # Teredo
    "2001:2::1": False,  # benchmarking
    "2001:db8::1": False,  # documentation
    "2002:a00:1::1": False,  # 6to4: Python 3.11's is_global says True
    "3fff::1": False,  # documentation (2024)
    "5f00::1": False,  # SRv6 SIDs
    "fc00::1": False,  # unique local
    "fd12:3456::1": False,
    "fe80::1": False,  # link-local
    "ff02::1": False,  # multicast
}


@pytest.mark.parametrize("address", sorted(CASES))
def test_address_policy(address: str) -> None:
    assert address_is_public(address) is CASES[address]


def test_every_block_the_registries_call_unreachable_is_refused() -> None:
    """The first, last and a middle address of each block the table calls not globally reachable
    (unless a more specific block in it says otherwise)."""
    blocks = [(ipaddress.ip_network(b), reachable) for b, reachable in SPECIAL_PURPOSE]
    for network, reachable in blocks:
        if reachable:
            continue
        exceptions = [n for n, r in blocks if r and n.version == network.version and n.subnet_of(network)]
        for ip in (network[0], network[network.num_addresses // 2], network[-1]):
            if any(ip in e for e in exceptions) or (ip.version == 6 and ip.ipv4_mapped is not None):
                continue
            assert not address_is_public(str(ip)), (str(network), str(ip))


@pytest.mark.parametrize("address", [a for a, public in sorted(CASES.items()) if not public])
def test_literal_callback_addresses_are_refused_by_default(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(Exception, match="private or loopback"):
        check_callback_address(f"https://{host}/callback", allow_private=False)
    check_callback_address(f"https://{host}/callback", allow_private=True)  # `up`'s trials


async def test_registering_a_cgnat_callback_is_a_400(client: httpx.AsyncClient, services: Services) -> None:
    before = await row_counts(services)
    res = await client.post("/mediator/endpoint", json=endpoint_body("cgnat", "https://100.64.12.1/callback"))
    assert assert_outcome(res, 400)["issue"][0]["expression"] == ["Endpoint.address"]
    assert await row_counts(services) == before
