"""Where a lookup may go: never to a private, loopback, link-local or otherwise special
address unless the settings allow its network, checked for every address the host resolves
to, and the request then made to a checked address (so DNS cannot answer differently the
second time)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# How long a host's checked addresses are reused.
RESOLVE_SECONDS = 30.0


class AddressRefused(Exception):
    """The host resolves to an address lookups may not reach."""


def special(address: Address) -> str | None:
    """What kind of address lookups refuse by default, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    return None


class AddressGuard:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed: list[Network] = [ipaddress.ip_network(n, strict=False) for n in allowed]
        self._resolved: dict[tuple[str, int], tuple[float, str]] = {}

    def _allows(self, address: Address) -> bool:
        return any(
            address in network for network in self.allowed if network.version == address.version
        )

    async def address(self, host: str, port: int) -> str:
        """A checked address to connect to for ``host``; ``AddressRefused`` otherwise."""
        cached = self._resolved.get((host, port))
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise AddressRefused(f"{host} does not resolve: {error}") from None
        addresses = []
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]
            address = ipaddress.ip_address(text)
            kind = special(address)
            if kind is not None and not self._allows(address):
                raise AddressRefused(
                    f"{host} resolves to {address}, a {kind} address; lookups may reach it only "
                    f"when allow_networks lists its network"
                )
            addresses.append(str(address))
        if not addresses:
            raise AddressRefused(f"{host} resolves to no address")
        self._resolved[(host, port)] = (now + RESOLVE_SECONDS, addresses[0])
        return addresses[0]
