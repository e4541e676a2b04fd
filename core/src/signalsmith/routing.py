"""Which events each sink takes: its ``Routing`` rules, the event's consent and ``integrations``.

The worker asks a sink's ``Router`` about every event before the sink's plugin sees a batch,
so no destination filters for itself (`docs/worker.md`, "Routing"). Rules are compiled once per
sink; asking costs a few attribute reads per event when nothing is configured.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from signalsmith.model import Event
from signalsmith.records import Sink


def consent_preferences(event: Event) -> dict[str, Any] | None:
    """The event's ``context.consent.categoryPreferences``, or None when it states none.

    Segment's rules (`shared/reference/segment-spec.md` section 5): no consent object, or one
    without preferences, means no enforcement; an empty preferences object grants nothing.
    """
    consent = event.context.get("consent")
    if not isinstance(consent, dict):
        return None
    preferences = consent.get("categoryPreferences")
    return preferences if isinstance(preferences, dict) else None


def missing_categories(event: Event, required: tuple[str, ...]) -> list[str]:
    """The categories of ``required`` the event's consent does not grant (all need ``true``)."""
    preferences = consent_preferences(event)
    if preferences is None:
        return []
    return [category for category in required if preferences.get(category) is not True]


class Router:
    """A sink's routing rules, compiled; ``refusal(event)`` says why the sink does not take it."""

    __slots__ = ("_consent", "_events", "_integration", "_sources", "_types", "sink")

    def __init__(self, sink: Sink) -> None:
        routing = sink.routing
        self.sink = sink
        self._types = frozenset(routing.types) or None
        self._events = (
            re.compile("|".join(fnmatch.translate(pattern) for pattern in routing.events))
            if routing.events
            else None
        )
        self._consent = routing.consent
        self._sources = routing.sources
        # Segment's `integrations` object names destinations; warehouses are not switched by it.
        self._integration = sink.name if sink.kind == "destination" else None

    @property
    def takes_everything(self) -> bool:
        return (
            self._types is None
            and self._events is None
            and not self._consent
            and self._sources is None
            and self._integration is None
        )

    def refusal(self, event: Event) -> str | None:
        """None when the sink takes ``event``, else the reason observers are told."""
        if self._sources is not None and event.project_id not in self._sources:
            return f"routing: source {event.project_id!r} does not list {self.sink.name}"
        if self._types is not None and event.type not in self._types:
            return f"routing: {self.sink.name} takes {', '.join(sorted(self._types))}, not {event.type}"
        if self._events is not None and event.type == "track":
            name = event.event  # type: ignore[union-attr]
            if not self._events.fullmatch(name):
                return f"routing: {self.sink.name} does not take event {name!r}"
        if self._consent:
            missing = missing_categories(event, self._consent)
            if missing:
                return f"consent: {', '.join(missing)} not granted"
        if self._integration is not None and event.integrations:
            switch = event.integrations.get(self._integration)
            if switch is False or (switch is None and event.integrations.get("All") is False):
                return f"integrations: {self._integration} switched off by the event"
        return None
