"""Which events each sink takes, and in what shape: its ``Routing`` rules and destination
filters, the event's consent and ``integrations``.

The worker asks a sink's ``Router`` about every event before the sink's plugin sees a batch,
so no destination filters for itself (`docs/worker.md`, "Routing"). Rules are compiled once per
sink (FQL conditions with `signalsmith.fql`, patterns into one regular expression); asking
costs a few attribute reads per event when nothing is configured.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import random
import re
from collections.abc import Callable
from typing import Any

import msgspec

from signalsmith.fql import Condition
from signalsmith.fql import parse as parse_condition
from signalsmith.model import Event
from signalsmith.records import DestinationFilter, FilterAction, Sink


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


def _patterns(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))


# --- destination filters ------------------------------------------------------------------------

# Top-level fields a filter may remove, by their wire name: the event attribute and its empty
# value. The fields every event needs (type, messageId, times, a track's event name, a group's
# groupId, an alias's previousId) are never removed.
_REMOVABLE: dict[str, tuple[str, Any]] = {
    "userId": ("user_id", None),
    "anonymousId": ("anonymous_id", None),
    "sentAt": ("sent_at", None),
    "originalTimestamp": ("original_timestamp", None),
    "context": ("context", {}),
    "integrations": ("integrations", {}),
    "properties": ("properties", {}),
    "traits": ("traits", {}),
    "name": ("name", None),
    "category": ("category", None),
}
_KEPT = frozenset(
    {"type", "messageId", "receivedAt", "timestamp", "event", "groupId", "previousId", "projectId"}
)
# Top-level objects a filter path may start with, by wire name.
_OBJECTS = {name: name for name in ("context", "integrations", "properties", "traits")}

Edit = Callable[[dict[str, Any]], dict[str, Any]]


def _edit_within(value: Any, path: list[str], edit: Edit) -> Any:
    """``value`` with ``edit`` applied to the object at ``path`` inside it (to every element of
    a list on the way, as Segment does), copying only what changes."""
    if isinstance(value, list):
        edited = [_edit_within(item, path, edit) for item in value]
        return value if all(a is b for a, b in zip(edited, value, strict=True)) else edited
    if not isinstance(value, dict):
        return value
    if not path:
        return edit(value)
    key, rest = path[0], path[1:]
    child = value.get(key)
    if child is None:
        return value
    changed = _edit_within(child, rest, edit)
    return value if changed is child else {**value, key: changed}


def _edit_event(event: Event, object_path: str, keys: tuple[str, ...], keep: bool) -> Event:
    """``event`` without ``keys`` at ``object_path`` (``keep``: with only those keys)."""
    if object_path == "":
        return _edit_top(event, keys, keep)
    head, *rest = object_path.split(".")
    attribute = _OBJECTS.get(head)
    root = getattr(event, attribute, None) if attribute else event.extra.get(head)
    if root is None:
        return event
    wanted = frozenset(keys)

    def edit(found: dict[str, Any]) -> dict[str, Any]:
        if keep:
            if all(key in wanted for key in found):
                return found
            return {key: item for key, item in found.items() if key in wanted}
        if not any(key in found for key in wanted):
            return found
        return {key: item for key, item in found.items() if key not in wanted}

    changed = _edit_within(root, rest, edit)
    if changed is root:
        return event
    if attribute:
        return msgspec.structs.replace(event, **{attribute: changed})
    return msgspec.structs.replace(event, extra={**event.extra, head: changed})


def _edit_top(event: Event, keys: tuple[str, ...], keep: bool) -> Event:
    fields = event.__struct_fields__
    wanted = frozenset(keys)
    changes: dict[str, Any] = {}
    for wire, (attribute, empty) in _REMOVABLE.items():
        if attribute not in fields or (wire in wanted) == keep:
            continue
        if getattr(event, attribute) != empty:
            changes[attribute] = empty
    extra = {
        key: item for key, item in event.extra.items() if key in _KEPT or (key in wanted) == keep
    }
    if len(extra) != len(event.extra):
        changes["extra"] = extra
    return msgspec.structs.replace(event, **changes) if changes else event


def sample_fraction(value: Any) -> float:
    """Where ``value`` falls in [0, 1) for deterministic sampling: the first 64 bits of the MD5
    of its compact JSON, as a fraction, like Segment's sampler (tsub-js, segmentio/sampler)."""
    digest = hashlib.md5(msgspec.json.encode(value), usedforsecurity=False).digest()
    return math.ldexp(int.from_bytes(digest[:8], "big") | 1, -64)


class _Filter:
    __slots__ = ("actions", "condition", "source", "title")

    def __init__(self, written: DestinationFilter, index: int) -> None:
        self.condition: Condition = parse_condition(written.condition)
        self.source = written.source
        self.title = written.title or f"filter {index + 1}"
        self.actions = written.actions

    def holds(self, event: Event) -> bool:
        if self.source is not None and event.project_id != self.source:
            return False
        return self.condition(event)


class _Filters:
    """Segment's destination filters, applied in its order: samples, drops, dropped properties,
    allowed properties (`shared/reference/plans-config-functions.md` section 3.2)."""

    __slots__ = ("_steps",)

    def __init__(self, filters: tuple[DestinationFilter, ...]) -> None:
        steps: dict[str, list[tuple[_Filter, FilterAction, Condition | None]]] = {
            kind: [] for kind in ("SAMPLE", "DROP", "DROP_PROPERTIES", "ALLOW_PROPERTIES")
        }
        for index, written in enumerate(filters):
            if not written.enabled:
                continue
            compiled = _Filter(written, index)
            for action in written.actions:
                # A deterministic sample reads its path as an FQL expression, compiled here.
                reader = parse_condition(action.path) if action.path else None
                steps[action.type].append((compiled, action, reader))
        self._steps = [(kind, entries) for kind, entries in steps.items() if entries]

    def apply(self, event: Event) -> tuple[Event | None, str | None]:
        holds: dict[int, bool] = {}

        def applies(compiled: _Filter) -> bool:
            # Every condition is asked of the event as it arrived, once.
            known = holds.get(id(compiled))
            if known is None:
                known = holds[id(compiled)] = compiled.holds(event)
            return known

        edited = event
        for kind, entries in self._steps:
            for compiled, action, reader in entries:
                if not applies(compiled):
                    continue
                if kind == "SAMPLE" and not _sampled_in(event, action, reader):
                    return None, f"filter {compiled.title!r}: sampled out ({action.percent:g} kept)"
                if kind == "DROP":
                    return None, f"filter {compiled.title!r}: dropped"
                if kind in ("DROP_PROPERTIES", "ALLOW_PROPERTIES"):
                    for object_path, keys in action.fields.items():
                        edited = _edit_event(
                            edited, object_path, keys, keep=kind == "ALLOW_PROPERTIES"
                        )
        return edited, None


def _sampled_in(event: Event, action: FilterAction, reader: Condition | None) -> bool:
    percent = action.percent if action.percent is not None else 1.0
    if percent <= 0:
        return False
    if percent >= 1:
        return True
    if reader is None:
        return random.random() < percent
    return sample_fraction(reader.value(event)) < percent


# --- the router ---------------------------------------------------------------------------------


class Router:
    """A sink's routing rules, compiled: ``route(event)`` is the event as the sink takes it (its
    filters applied) or None, with the reason observers are told."""

    __slots__ = (
        "_condition",
        "_consent",
        "_deny_events",
        "_deny_types",
        "_events",
        "_filters",
        "_integration",
        "_sources",
        "_types",
        "sink",
    )

    def __init__(self, sink: Sink) -> None:
        """Raises ``signalsmith.fql.FqlError`` for a condition that does not parse (the
        workspace checks them when a document is applied)."""
        routing = sink.routing
        self.sink = sink
        self._types = frozenset(routing.types) or None
        self._deny_types = frozenset(routing.deny_types) or None
        self._events = _patterns(routing.events)
        self._deny_events = _patterns(routing.deny_events)
        self._condition = parse_condition(routing.condition) if routing.condition else None
        self._consent = routing.consent
        self._sources = routing.sources
        self._filters = _Filters(routing.filters) if routing.filters else None
        # Segment's `integrations` object names destinations; warehouses are not switched by it.
        self._integration = sink.name if sink.kind == "destination" else None

    @property
    def takes_everything(self) -> bool:
        return (
            self._types is None
            and self._deny_types is None
            and self._events is None
            and self._deny_events is None
            and self._condition is None
            and not self._consent
            and self._sources is None
            and self._filters is None
            and self._integration is None
        )

    def route(self, event: Event) -> tuple[Event | None, str | None]:
        """``(event, None)`` when the sink takes it (changed by its filters), else
        ``(None, reason)``."""
        reason = self.refusal(event)
        if reason is not None:
            return None, reason
        if self._filters is None:
            return event, None
        return self._filters.apply(event)

    def refusal(self, event: Event) -> str | None:
        """Why the sink's rules refuse ``event`` (before its filters), or None."""
        name = self.sink.name
        if self._sources is not None and event.project_id not in self._sources:
            return f"routing: source {event.project_id!r} does not list {name}"
        if self._types is not None and event.type not in self._types:
            return f"routing: {name} takes {', '.join(sorted(self._types))}, not {event.type}"
        if self._deny_types is not None and event.type in self._deny_types:
            return f"routing: {name} does not take {event.type} events"
        if event.type == "track" and (self._events is not None or self._deny_events is not None):
            event_name = event.event  # type: ignore[union-attr]
            if (self._events is not None and not self._events.fullmatch(event_name)) or (
                self._deny_events is not None and self._deny_events.fullmatch(event_name)
            ):
                return f"routing: {name} does not take event {event_name!r}"
        if self._condition is not None and not self._condition(event):
            return f"routing: {name} takes events where {self._condition.source}"
        if self._consent:
            missing = missing_categories(event, self._consent)
            if missing:
                return f"consent: {', '.join(missing)} not granted"
        if self._integration is not None and event.integrations:
            switch = event.integrations.get(self._integration)
            if switch is False or (switch is None and event.integrations.get("All") is False):
                return f"integrations: {self._integration} switched off by the event"
        return None
