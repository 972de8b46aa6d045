"""Callback addresses: where the mediator agrees to send a requester's notifications.

A requester's Endpoint address receives the Subscription notifications, so a bad one would make
this service call into its own network. It must be http(s), carry no credentials, and (unless
``ALLOW_PRIVATE_CALLBACKS`` is set) point only at globally reachable addresses (not loopback,
private, carrier-grade NAT, link-local, documentation…: the IANA special-purpose registries, in
``kit/addresses.py``, which the Subscription delivery checks too), neither by its literal form
(checked with the rest of the Endpoint in ``validation.py``) nor by what its name resolves to
(checked when it is registered, in ``requesters.py``). The policy lives here so that both checks
say the same thing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from cht_interop.fhir.errors import InvalidRequest
from cht_interop.kit.addresses import is_public

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")
RESOLVE_TIMEOUT_SECONDS = 3


def _refused(message: str) -> InvalidRequest:
    return InvalidRequest(message, expression=["Endpoint.address"])


def check_callback_address(address: str, *, allow_private: bool) -> None:
    """http(s) only; loopback, private, link-local and reserved hosts refused unless allowed.

    A host name is judged by its literal form here (``localhost``, ``*.local`` …); registration
    also resolves it (``check_resolved_address``) since a public-looking name can point inward.
    """
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https"):
        raise _refused('"address" must be an http or https URL')
    host = parts.hostname
    if not host:
        raise _refused('"address" must name a host')
    if parts.username or parts.password:
        raise _refused('"address" must not carry credentials; use Subscription headers')
    if allow_private:
        return
    if host_is_private(host):
        raise _refused(
            f'"address" points to a private or loopback host ({host}); such callbacks are refused '
            "unless ALLOW_PRIVATE_CALLBACKS is set"
        )


async def check_resolved_address(address: str, *, allow_private: bool) -> None:
    """A public-looking name may still resolve inward; refuse it unless private callbacks are allowed."""
    if allow_private:
        return
    host = urlsplit(address).hostname or ""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return  # literal addresses were judged by check_callback_address
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError):
        return  # cannot tell now; delivery will fail visibly if it never resolves
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address_is_private(ip):
            raise _refused(
                f'"address" resolves to a private or loopback address ({host} → {ip}); such '
                "callbacks are refused unless ALLOW_PRIVATE_CALLBACKS is set"
            )


def host_is_private(host: str) -> bool:
    """A host that names this machine or its network: loopback, private, local-only names."""
    name = host.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES) or "." not in name
    return address_is_private(ip)


def address_is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address no callback may go to: any that is not globally reachable by the IANA
    special-purpose registries, or multicast (``kit/addresses.py``, the one rule; IPv4-mapped and
    NAT64 IPv6 judged by their IPv4 address too)."""
    return not is_public(ip)
