"""SignalSmith's enrich transform: user agents, IP geolocation and HTTP lookups into events.
``plugin`` registers the ``enrich`` type; ``settings`` holds its settings, ``user_agent``,
``geo`` and ``lookup`` the three enrichments, ``guard`` the address check, ``breaker`` the
circuit breaker, ``enriching`` the function that runs them in order."""

from __future__ import annotations

from signalsmith_transform_enrich.breaker import CircuitBreaker
from signalsmith_transform_enrich.settings import (
    BreakerSettings,
    EnrichSettings,
    GeoSettings,
    LookupSettings,
    UserAgentSettings,
)

__all__ = [
    "BreakerSettings",
    "CircuitBreaker",
    "EnrichSettings",
    "GeoSettings",
    "LookupSettings",
    "UserAgentSettings",
]
