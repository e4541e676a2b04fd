"""The ``properties`` transform: add, remove, hash and cap fields of events.

The steps run in this order on each event the instance applies to (``types``, ``events``):
``add`` (static values and templates, read from the event as it came in), ``remove`` (paths
and globs), ``hash`` (HMAC-SHA-256 keyed with a secret salt, hex), ``cap`` (strings longer than
``max_length`` characters are cut). Events are never changed in place (``signalsmith.EventEdit``).

A field ``hash`` or ``cap`` names but the event lacks is not an error (nothing to protect); a
field of the wrong type (an object where text is hashed), or a template whose field is missing,
leaves that field as it is and says so in a ``skipped`` outcome.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

import msgspec

from signalsmith import (
    MISSING,
    Event,
    EventEdit,
    EventPath,
    PathError,
    PathPattern,
    Secret,
    SettingsError,
    Source,
    StageResult,
    edit_events,
    kind_of,
    path_text,
)
from signalsmith_transform_properties.templates import Template, TemplateError

MessageType = Literal["track", "identify", "page", "screen", "group", "alias"]
_OBJECTS = {
    "properties": "properties",
    "traits": "traits",
    "context": "context",
    "integrations": "integrations",
}


def _pattern(text: str, where: tuple[str | int, ...]) -> PathPattern:
    try:
        return PathPattern(text)
    except PathError as error:
        raise SettingsError(where, str(error)) from None


class HashSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Replace each named field's value by its HMAC-SHA-256 under ``salt`` (64 hex digits)."""

    fields: tuple[str, ...]
    salt: Secret

    def __post_init__(self) -> None:
        if not self.fields:
            raise SettingsError(("fields",), "name at least one field to hash")
        for index, text in enumerate(self.fields):
            _pattern(text, ("fields", index))


class CapSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Cut strings longer than ``max_length`` characters (code points)."""

    max_length: Annotated[int, msgspec.Meta(ge=1)]
    # Paths or globs; an object (``properties``) caps every string inside it, at any depth.
    fields: tuple[str, ...] = ("properties", "traits")

    def __post_init__(self) -> None:
        for index, text in enumerate(self.fields):
            if text not in _OBJECTS:
                _pattern(text, ("fields", index))


class PropertiesSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Path -> value; a string with {{ ... }} is a template reading the event.
    add: dict[str, Any] = {}
    # Whether ``add`` replaces a value the event already has.
    overwrite: bool = True
    remove: tuple[str, ...] = ()
    hash: HashSettings | None = None
    cap: CapSettings | None = None
    # Which events the instance edits: message types, and track event names (shell patterns).
    types: tuple[MessageType, ...] = ()
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.add or self.remove or self.hash or self.cap):
            raise SettingsError((), "a properties transform needs `add`, `remove`, `hash` or `cap`")
        _additions(self.add)
        for index, text in enumerate(self.remove):
            _pattern(text, ("remove", index))


def _additions(add: dict[str, Any]) -> list[tuple[EventPath, Template | None, Any]]:
    found = []
    for text, value in add.items():
        try:
            path = EventPath(text, writable=True)
        except PathError as error:
            raise SettingsError(("add", text), str(error)) from None
        template = None
        if isinstance(value, str) and Template.holds_expressions(value):
            try:
                template = Template(value)
            except TemplateError as error:
                raise SettingsError(("add", text), str(error)) from None
        found.append((path, template, value))
    return found


def hash_value(value: Any, key: bytes) -> str:
    """HMAC-SHA-256 of ``value`` (text as UTF-8, numbers and booleans as JSON) under ``key``."""
    data = value.encode() if isinstance(value, str) else msgspec.json.encode(value)
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _long_strings(
    value: Any, keys: tuple[Any, ...], limit: int
) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(value, str):
        if len(value) > limit:
            yield keys, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _long_strings(item, (*keys, key), limit)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _long_strings(item, (*keys, index), limit)


def build_properties(settings: PropertiesSettings, name: str = "properties") -> Any:
    """The instance's function: ``apply(source, events)``, None when nothing changed."""
    additions = _additions(settings.add)
    removals = [PathPattern(text) for text in settings.remove]
    hashed = [PathPattern(text) for text in settings.hash.fields] if settings.hash else []
    key = settings.hash.salt.encode() if settings.hash else b""
    cap = settings.cap
    capped_roots = [text for text in cap.fields if text in _OBJECTS] if cap else []
    capped = [PathPattern(text) for text in cap.fields if text not in _OBJECTS] if cap else []
    types = frozenset(settings.types) if settings.types else None
    event_patterns = settings.events
    overwrite = settings.overwrite

    def applies(event: Event) -> bool:
        if types is not None and event.type not in types:
            return False
        if event_patterns:
            event_name = getattr(event, "event", None)
            return event_name is not None and any(
                fnmatchcase(event_name, p) for p in event_patterns
            )
        return True

    def edit_one(edit: EventEdit, problems: list[str]) -> None:
        original = edit.original
        for path, template, value in additions:
            if not path.applies_to(original):
                continue
            if not overwrite and path.read(edit.event) is not MISSING:
                continue
            if template is not None:
                value, why = template.render(original)
                if value is MISSING:
                    problems.append(f"{path.text} not added: {why}")
                    continue
            if path.read(edit.event) == value:
                continue
            problem = edit.set(path, value)
            if problem is not None:
                problems.append(f"{path.text} not added: {problem}")
            else:
                edit.changes.append(f"set {path.text}")
        for pattern in removals:
            for keys in pattern.matches(edit.event):
                if edit.pop_at(pattern.attribute, keys) is not MISSING:
                    edit.changes.append(f"removed {path_text(pattern.root, keys)}")
        for pattern in hashed:
            for keys in pattern.matches(edit.event):
                value = edit.get_at(pattern.attribute, keys)
                where = path_text(pattern.root, keys)
                if value is None:
                    continue
                if isinstance(value, dict | list):
                    problems.append(f"{where} not hashed: it is {kind_of(value)}")
                    continue
                edit.set_at(pattern.attribute, keys, hash_value(value, key))
                edit.changes.append(f"hashed {where}")
        if cap is not None:
            limit = cap.max_length
            places: list[tuple[str, str, tuple[Any, ...], Any]] = []
            for root in capped_roots:
                attribute = _OBJECTS[root]
                places.append((root, attribute, (), getattr(edit.event, attribute, None)))
            for pattern in capped:
                for keys in pattern.matches(edit.event):
                    value = edit.get_at(pattern.attribute, keys)
                    if value is not None and not isinstance(value, str | dict | list):
                        problems.append(
                            f"{path_text(pattern.root, keys)} not capped: it is {kind_of(value)}"
                        )
                        continue
                    places.append((pattern.root, pattern.attribute, keys, value))
            for root, attribute, keys, value in places:
                for inner, text in list(_long_strings(value, keys, limit)):
                    edit.set_at(attribute, inner, text[:limit])
                    edit.changes.append(f"capped {path_text(root, inner)} at {limit} characters")

    def apply(source: Source, events: list[Event]) -> StageResult | None:
        return edit_events(events, source, name, edit_one, applies=applies)

    return apply
