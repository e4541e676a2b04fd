"""The ``rename`` transform: event names, field paths and keys matching a pattern.

Rules run in the order written: ``events`` first (track event names, page and screen names),
then ``fields`` (one path moved to another, nested paths too), then ``keys`` (every key of one
object that matches a pattern). A field rule scoped with ``events`` sees the name as the event
rules left it. Patterns are Python regular expressions, compiled when the workspace is checked,
matched against the whole name; the replacement may use ``\\1`` and ``\\g<name>``.

Events are never changed in place: a renamed event is a copy (``signalsmith.EventEdit``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any, Literal

import msgspec

from signalsmith import (
    MISSING,
    Event,
    EventEdit,
    EventPath,
    PathError,
    SettingsError,
    Source,
    StageResult,
    edit_events,
    kind_of,
    path_text,
)

MessageType = Literal["track", "identify", "page", "screen", "group", "alias"]
NamedType = Literal["track", "page", "screen"]
_GROUP_REFERENCE = re.compile(r"\\(\d+)|\\g<([^>]*)>")
_NAME_FIELDS = {
    "event": EventPath("event", writable=True),
    "name": EventPath("name", writable=True),
}


def _pattern(text: str, replacement: str, setting: str) -> re.Pattern[str]:
    """``text`` compiled, with every group ``replacement`` refers to checked to exist."""
    try:
        compiled = re.compile(text)
    except re.error as error:
        raise SettingsError((setting,), f"the pattern {text!r} does not compile: {error}") from None
    for number, name in _GROUP_REFERENCE.findall(replacement):
        if number and int(number) > compiled.groups:
            raise SettingsError(
                ("to",),
                f"{replacement!r} refers to group {number}, but {text!r} has {compiled.groups}",
            )
        if name and not name.isdigit() and name not in compiled.groupindex:
            raise SettingsError(
                ("to",), f"{replacement!r} refers to group {name!r}, which {text!r} lacks"
            )
        if name.isdigit() and int(name) > compiled.groups:
            raise SettingsError(
                ("to",),
                f"{replacement!r} refers to group {name}, but {text!r} has {compiled.groups}",
            )
    return compiled


def _path(text: str, setting: str, *, writable: bool = True) -> EventPath:
    try:
        return EventPath(text, writable=writable)
    except PathError as error:
        raise SettingsError((setting,), str(error)) from None


class EventRename(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event name to another (``from``), or every name a pattern matches (``match``)."""

    to: str
    from_: str | None = msgspec.field(default=None, name="from")
    match: str | None = None
    # Track events' ``event``; page and screen events' ``name``.
    types: tuple[NamedType, ...] = ("track",)

    def __post_init__(self) -> None:
        if (self.from_ is None) == (self.match is None):
            raise SettingsError((), "an event rename takes `from` (a name) or `match` (a pattern)")
        if self.match is not None:
            _pattern(self.match, self.to, "match")


class FieldRename(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Move the value at one path to another (``properties.total`` -> ``properties.revenue``)."""

    from_: str = msgspec.field(name="from")
    to: str
    # Message types the rule applies to (none: every type that has the field).
    types: tuple[MessageType, ...] = ()
    # Track event names (shell-style patterns) the rule applies to (none: every event).
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        source = _path(self.from_, "from")
        target = _path(self.to, "to")
        if source.segments == target.segments:
            raise SettingsError(("to",), f"{self.to!r} is the path it renames")


class KeyRename(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Rename every key of one object that matches a pattern (``utm_(.+)`` -> ``campaign_\\1``)."""

    within: str = msgspec.field(name="in")
    match: str
    to: str
    types: tuple[MessageType, ...] = ()
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        path = _path(self.within, "in", writable=False)
        if path.root not in ("properties", "traits", "context", "integrations"):
            raise SettingsError(("in",), f"{self.within!r} is not an object of the event")
        _pattern(self.match, self.to, "match")


class RenameSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    events: tuple[EventRename, ...] = ()
    fields: tuple[FieldRename, ...] = ()
    keys: tuple[KeyRename, ...] = ()

    def __post_init__(self) -> None:
        if not (self.events or self.fields or self.keys):
            raise SettingsError(
                (), "a rename needs at least one rule under `events`, `fields` or `keys`"
            )


class _Scope:
    """Which events a rule applies to: message types and track event name patterns."""

    __slots__ = ("events", "types")

    def __init__(self, types: tuple[str, ...], events: tuple[str, ...]) -> None:
        self.types = frozenset(types) if types else None
        self.events = events

    def holds(self, event: Event) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        if self.events:
            name = getattr(event, "event", None)
            return name is not None and any(fnmatchcase(name, pattern) for pattern in self.events)
        return True


def _renamer(pattern: re.Pattern[str], to: str) -> Callable[[str], str | None]:
    """The new name for a name ``pattern`` matches whole (None when it does not match).

    Names repeat (the same event names and property keys in every batch), and ``expand``
    parses its template on every call, so the answers are kept for the names seen last.
    """

    @functools.lru_cache(maxsize=4096)
    def rename(name: str) -> str | None:
        matched = pattern.fullmatch(name)
        return None if matched is None else matched.expand(to)

    return rename


def build_rename(settings: RenameSettings, name: str = "rename") -> Any:
    """The instance's function: ``apply(source, events)``, None when nothing changed."""
    event_rules = [
        (
            rule.from_,
            _renamer(_pattern(rule.match, rule.to, "match"), rule.to)
            if rule.match is not None
            else None,
            rule.to,
            frozenset(rule.types),
        )
        for rule in settings.events
    ]
    field_rules = [
        (
            EventPath(rule.from_, writable=True),
            EventPath(rule.to, writable=True),
            _Scope(rule.types, rule.events),
        )
        for rule in settings.fields
    ]
    key_rules = [
        (
            EventPath(rule.within),
            _renamer(re.compile(rule.match), rule.to),
            _Scope(rule.types, rule.events),
        )
        for rule in settings.keys
    ]
    renamed_types = frozenset(t for _, _, _, types in event_rules for t in types)

    def rename_event(edit: EventEdit) -> None:
        event = edit.event
        if event.type not in renamed_types:
            return
        attribute = "event" if event.type == "track" else "name"
        current = getattr(event, attribute)
        if current is None:
            return
        for exact, renamer, to, types in event_rules:
            if event.type not in types:
                continue
            if exact is not None:
                if current != exact:
                    continue
                new = to
            else:
                assert renamer is not None
                renamed = renamer(current)
                if renamed is None:
                    continue
                new = renamed
            if new != current:
                edit.set(_NAME_FIELDS[attribute], new)
                edit.changes.append(f"{attribute} {current!r} -> {new!r}")
                current = new
            break  # the first rule that matches a name renames it

    def rename_one(edit: EventEdit, problems: list[str]) -> None:
        if event_rules:
            rename_event(edit)
        for source_path, target_path, scope in field_rules:
            if not source_path.applies_to(edit.event) or not scope.holds(edit.event):
                continue
            value = source_path.read(edit.event)
            if value is MISSING:
                problems.append(
                    f"{source_path.text} not renamed: {source_path.why_missing(edit.event)}"
                )
                continue
            problem = edit.set(target_path, value)
            if problem is not None:
                problems.append(f"{source_path.text} not renamed: {problem}")
                continue
            edit.pop(source_path)
            edit.changes.append(f"{source_path.text} -> {target_path.text}")
        for object_path, renamer, scope in key_rules:
            if not object_path.applies_to(edit.event) or not scope.holds(edit.event):
                continue
            container = object_path.read(edit.event)
            if container is MISSING:
                continue  # no object, no keys to rename
            if not isinstance(container, dict):
                problems.append(
                    f"keys of {object_path.text} not renamed: it is {kind_of(container)}, not an object"
                )
                continue
            keys = object_path.rest
            for key in list(container):
                new_key = renamer(key) if isinstance(key, str) else None
                if new_key is None or new_key == key:
                    continue
                value = edit.pop_at(object_path.attribute, (*keys, key))
                edit.set_at(object_path.attribute, (*keys, new_key), value)
                edit.changes.append(
                    f"{path_text(object_path.root, (*keys, key))} -> {path_text(object_path.root, (*keys, new_key))}"
                )

    def apply(source: Source, events: list[Event]) -> StageResult | None:
        return edit_events(
            events,
            source,
            name,
            rename_one,
            describe=lambda changes: "renamed " + ", ".join(changes),
        )

    return apply
