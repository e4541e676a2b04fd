"""The ``enrich`` transform's settings; every check that needs only the settings is here, so a
bad setting is refused, with its path, when the workspace is checked."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import msgspec

from signalsmith import EventPath, PathError, Secret, SettingsError, Url


def _path(text: str, where: tuple[str, ...], *, writable: bool) -> EventPath:
    try:
        return EventPath(text, writable=writable)
    except PathError as error:
        raise SettingsError(where, str(error)) from None


class UserAgentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parse ``from`` (``context.userAgent``) into ``context.browser``, ``context.os`` and
    ``context.device`` (``type: bot`` for crawlers)."""

    from_: str = msgspec.field(default="context.userAgent", name="from")
    # Whether parsed values replace ones the event has (a mobile SDK's context.os).
    overwrite: bool = False
    # Distinct user agents whose parse is kept in memory.
    cache_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000

    def __post_init__(self) -> None:
        _path(self.from_, ("from",), writable=False)


class GeoSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Look ``from`` (``context.ip``) up in a MaxMind DB (GeoIP2/GeoLite2 City or Country)."""

    # The .mmdb file, on the host of each collector (checked where the instance is built).
    database: str
    from_: str = msgspec.field(default="context.ip", name="from")
    to: str = "context.location"
    overwrite: bool = False
    # The language of place names (the database's ``names`` key).
    language: str = "en"
    cache_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000

    def __post_init__(self) -> None:
        _path(self.from_, ("from",), writable=False)
        _path(self.to, ("to",), writable=True)


class BreakerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Open after ``failures`` failed lookups in a row; after ``reset_seconds`` one probe
    goes through, and a success closes it again."""

    failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    reset_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0


class LookupSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """GET ``url`` with ``{key}`` replaced by the event's ``key`` value; the JSON object it
    answers goes to ``to``."""

    url: Url
    key: str = "userId"
    to: str = "context.lookup"
    # Keys of the answer to keep (none: all of it).
    select: tuple[str, ...] = ()
    # Sent with every lookup; secrets, so written as ${ENV_NAME} ("Bearer ${CRM_TOKEN}").
    headers: dict[str, Secret] = {}
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=30)] = 1.0
    # How long an answer (a 404 too) is reused.
    cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 300.0
    cache_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000
    # Lookups in flight at once, per instance.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    # An event whose lookup failed: passed on without the data, or dropped.
    on_failure: Literal["pass", "drop"] = "pass"
    breaker: BreakerSettings = BreakerSettings()
    # Networks lookups may reach although private, loopback or link-local ("127.0.0.0/8").
    allow_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if "{key}" not in self.url:
            raise SettingsError(("url",), "the URL needs {key} where the looked-up value goes")
        _path(self.key, ("key",), writable=False)
        _path(self.to, ("to",), writable=True)
        for index, network in enumerate(self.allow_networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as error:
                raise SettingsError(("allow_networks", index), str(error)) from None


class EnrichSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Run in this order: ``user_agent``, ``geo``, ``lookup``; at least one."""

    user_agent: UserAgentSettings | None = None
    geo: GeoSettings | None = None
    lookup: LookupSettings | None = None

    def __post_init__(self) -> None:
        if self.user_agent is None and self.geo is None and self.lookup is None:
            raise SettingsError((), "an enrich transform needs `user_agent`, `geo` or `lookup`")
