"""User agents into Segment's ``context`` fields, with ua-parser (uap-core's rules).

A parse costs ~15 µs (ua-parser's regex resolver, ua-parser-rs); the same user agent is sent
again and again, so each instance keeps the fields of the last ``cache_size`` distinct ones
(``functools.lru_cache``: a hit costs well under a microsecond; see bench/RESULTS.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ua_parser import BestAvailableResolver, Parser, load_lazy_builtins

# Groups under ``context`` and their fields: (("browser", {"name": "Chrome", ...}), ...).
Fields = tuple[tuple[str, dict[str, str]], ...]


@functools.cache
def shared_parser() -> Parser:
    """One parser per process: loading uap-core's rules takes ~0.4 s and they never change."""
    return Parser(BestAvailableResolver(load_lazy_builtins()))


def _version(*parts: str | None) -> str | None:
    present = []
    for part in parts:
        if not part:
            break
        present.append(part)
    return ".".join(present) or None


def _fields(parser: Parser, user_agent: str) -> Fields:
    """``(("browser", {"name": "Chrome", "version": "120.0.0"}), ...)``: objects under
    ``context`` and the fields the user agent gives them."""
    result = parser.parse(user_agent)
    found: list[tuple[tuple[str, str], str]] = []
    browser = result.user_agent
    if browser is not None and browser.family != "Other":
        found.append((("browser", "name"), browser.family))
        version = _version(browser.major, browser.minor, browser.patch)
        if version:
            found.append((("browser", "version"), version))
    system = result.os
    if system is not None and system.family != "Other":
        found.append((("os", "name"), system.family))
        version = _version(system.major, system.minor, system.patch)
        if version:
            found.append((("os", "version"), version))
    device = result.device
    if device is not None and device.family != "Other":
        if device.family == "Spider":
            found.append((("device", "type"), "bot"))
        else:
            if device.brand:
                found.append((("device", "manufacturer"), device.brand))
            if device.model:
                found.append((("device", "model"), device.model))
    groups: dict[str, dict[str, str]] = {}
    for (group, field), value in found:
        groups.setdefault(group, {})[field] = value
    return tuple(groups.items())


def user_agent_fields(cache_size: int) -> Callable[[str], Fields]:
    """A function from a user agent to its fields, caching ``cache_size`` of them."""
    parser = shared_parser()
    parse: Callable[[str], Any] = functools.partial(_fields, parser)
    if cache_size:
        return functools.lru_cache(maxsize=cache_size)(parse)
    return parse
