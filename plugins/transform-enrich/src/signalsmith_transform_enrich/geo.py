"""IP addresses into ``context.location`` through a MaxMind DB (``maxminddb``'s C reader).

Reads GeoIP2/GeoLite2 City and Country databases (and any database with their record layout):
``city``, ``country`` (names in ``language``), ``countryCode``, ``region`` (the first
subdivision), ``latitude``, ``longitude``, ``timeZone`` where the record has them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Any

import maxminddb

from signalsmith import SettingsError

Location = dict[str, Any]


def open_database(path: str) -> Any:
    """The reader for ``path``; ``SettingsError`` at ``geo.database`` when it cannot be read."""
    try:
        return maxminddb.open_database(path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
        raise SettingsError(
            ("geo", "database"), f"cannot open the MaxMind database {path!r}: {error}"
        ) from None


def _name(record: Any, language: str) -> str | None:
    if not isinstance(record, dict):
        return None
    names = record.get("names")
    if isinstance(names, dict):
        return names.get(language) or names.get("en")
    return None


def location_of(record: dict[str, Any], language: str) -> Location:
    found: Location = {}
    city = _name(record.get("city"), language)
    if city:
        found["city"] = city
    country = record.get("country")
    if isinstance(country, dict):
        name = _name(country, language)
        if name:
            found["country"] = name
        if country.get("iso_code"):
            found["countryCode"] = country["iso_code"]
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions:
        region = _name(subdivisions[0], language)
        if region:
            found["region"] = region
    location = record.get("location")
    if isinstance(location, dict):
        for key, name in (
            ("latitude", "latitude"),
            ("longitude", "longitude"),
            ("time_zone", "timeZone"),
        ):
            if location.get(key) is not None:
                found[name] = location[key]
    return found


class NotAnAddress(ValueError):
    pass


def locator(reader: Any, language: str, cache_size: int) -> Callable[[str], Location | None]:
    """A function from an IP address (text) to its location (None: not in the database);
    ``NotAnAddress`` for text that is not an IP address."""

    def locate(text: str) -> Location | None:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise NotAnAddress(f"{text!r} is not an IP address") from None
        try:
            record = reader.get(address)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None
        if not isinstance(record, dict):
            return None
        return location_of(record, language) or None

    if cache_size:
        return functools.lru_cache(maxsize=cache_size)(locate)
    return locate
