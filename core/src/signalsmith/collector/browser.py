"""The settings analytics-next fetches (`/v1/projects/{key}/settings`), pointing it here.

Where "here" is comes from the settings (``SIGNALSMITH_PUBLIC_URL``) or from the forwarded
headers of a trusted proxy, never from a client's own headers, which a cache in front would
then serve to everyone.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request

from signalsmith.config import Settings


class BrowserSettings(msgspec.Struct, frozen=True):
    """The minimal CDN settings that make analytics-next send everything to this host."""

    integrations: dict[str, Any]
    metrics: dict[str, Any]
    remotePlugins: list[Any]
    enabledMiddleware: dict[str, Any]


# A host name or address with an optional port: what a forwarded Host may hold.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class PublicAddress:
    """Where browsers reach this collector: ``(protocol, host[:port][/path])``.

    ``SIGNALSMITH_PUBLIC_URL`` when set; else, for a request from one of
    ``SIGNALSMITH_TRUSTED_PROXIES``, its X-Forwarded-Host and X-Forwarded-Proto; else this
    server's own host and port. A client's own Host header never counts.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.public_url:
            parts = urlsplit(settings.public_url)
            self.configured: tuple[str, str] | None = (
                parts.scheme,
                parts.netloc + parts.path.rstrip("/"),
            )
        else:
            self.configured = None
        self.own = ("http", settings.local_url.removeprefix("http://"))
        self.proxies = [
            ipaddress.ip_network(proxy, strict=False) for proxy in settings.trusted_proxies
        ]

    def __call__(self, request: Request[Any, Any, Any]) -> tuple[str, str]:
        if self.configured is not None:
            return self.configured
        if self.proxies and request.client is not None and self._trusted(request.client.host):
            protocol, host = self.own
            forwarded_proto = _last(request.headers.get("x-forwarded-proto")).lower()
            if forwarded_proto in ("http", "https"):
                protocol = forwarded_proto
            forwarded_host = _last(request.headers.get("x-forwarded-host"))
            if _HOST.match(forwarded_host):
                host = forwarded_host
            return protocol, host
        return self.own

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)


def _last(header: str | None) -> str:
    """The last value of a comma-separated forwarded header: the one the nearest proxy (the
    trusted one) set; a proxy that appends keeps whatever the client sent before it."""
    return (header or "").split(",")[-1].strip()
