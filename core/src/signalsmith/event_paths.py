"""Reading and editing event fields by path, without changing the event a stage was handed.

Transforms name fields as FQL does (``properties.total``, ``context.traits.email``; ``\\``
escapes a character, digits index a list). ``EventPath`` parses a path once, when settings are
checked; ``EventEdit`` edits one event copy-on-write: the event and each object on an edited
path are copied once, on the first edit, so the event the stage was handed (which outcomes
already reported to observers may hold) never changes, and an untouched event costs nothing.
``PathPattern`` is a path whose segments may be globs (``properties.*_debug``), for removing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from fnmatch import translate
from typing import Any

import msgspec

from signalsmith.fql import split_path
from signalsmith.model import Event, EventBase
from signalsmith.records import Outcome, Source, StageResult, StageStatus

# Segment's top-level names whose value is an object (edited inside), text (set whole), or a
# field only the pipeline sets (read, never written).
OBJECT_FIELDS = {
    "properties": "properties",
    "traits": "traits",
    "context": "context",
    "integrations": "integrations",
}
TEXT_FIELDS = {
    "event": "event",
    "name": "name",
    "category": "category",
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "groupId": "group_id",
    "previousId": "previous_id",
}
READ_ONLY_FIELDS = {
    "type": "type",
    "messageId": "message_id",
    "timestamp": "timestamp",
    "receivedAt": "received_at",
    "sentAt": "sent_at",
    "originalTimestamp": "original_timestamp",
    "projectId": "project_id",
}
FIELDS = {**OBJECT_FIELDS, **TEXT_FIELDS, **READ_ONLY_FIELDS}
# Text fields an event cannot be without.
_REQUIRED_TEXT = frozenset({"event", "group_id", "previous_id"})


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


class PathError(ValueError):
    """A path that names no field events have, or that cannot be written."""


Key = str | int


def _step(container: Any, segment: str) -> Any:
    if isinstance(container, dict):
        return container.get(segment, MISSING)
    if isinstance(container, list) and segment.isdigit():
        index = int(segment)
        return container[index] if index < len(container) else MISSING
    return MISSING


def kind_of(value: Any) -> str:
    """A JSON-ish name for a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class EventPath:
    """A parsed path to one field of an event; ``read(event)`` is its value or ``MISSING``."""

    __slots__ = ("attribute", "rest", "root", "segments", "text")

    def __init__(self, text: str, *, writable: bool = False) -> None:
        if not isinstance(text, str) or not text.strip():
            raise PathError("a path is a field name such as properties.total")
        segments = split_path(text.strip())
        if any(segment == "" for segment in segments):
            raise PathError(f"{text!r} has an empty segment")
        root, rest = segments[0], segments[1:]
        if root not in FIELDS:
            raise PathError(
                f"{text!r} names no field events have: {root!r} is not one of "
                f"{', '.join(sorted(FIELDS))}"
            )
        if rest and root not in OBJECT_FIELDS:
            raise PathError(f"{text!r}: {root} is not an object, it has no fields")
        if writable and root in READ_ONLY_FIELDS:
            raise PathError(f"{text!r}: {root} is set by SignalSmith and cannot be changed")
        if writable and root in OBJECT_FIELDS and not rest:
            raise PathError(f"{text!r}: name a field inside {root} (such as {root}.plan)")
        self.text = text.strip()
        self.segments = segments
        self.root = root
        self.attribute = FIELDS[root]
        self.rest = rest

    def __repr__(self) -> str:
        return f"EventPath({self.text!r})"

    def applies_to(self, event: EventBase) -> bool:
        """Whether events of this one's type have the path's top-level field."""
        return hasattr(event, self.attribute)

    def read(self, event: EventBase) -> Any:
        value = getattr(event, self.attribute, MISSING)
        if value is None and not self.rest:
            return MISSING
        for segment in self.rest:
            value = _step(value, segment)
            if value is MISSING:
                return MISSING
        return value

    def why_missing(self, event: EventBase) -> str:
        """Why ``read(event)`` found nothing: the missing field, or the value in the way."""
        value = getattr(event, self.attribute, MISSING)
        if value is MISSING:
            return f"{event.type} events have no {self.root}"
        walked = self.root
        for segment in self.rest:
            if not isinstance(value, dict | list):
                return f"{walked} is {kind_of(value)}, not an object"
            following = _step(value, segment)
            walked = f"{walked}.{segment}"
            if following is MISSING:
                return f"{walked} is missing"
            value = following
        return f"{walked} is missing"


class PathPattern:
    """A path whose segments may be globs (``*``, ``?``, ``[abc]``); a glob on a list matches
    its elements. ``matches(event)`` lists the concrete places it names in one event."""

    __slots__ = ("attribute", "globs", "root", "text")

    def __init__(self, text: str) -> None:
        path = EventPath(text, writable=True)
        self.text = path.text
        self.root = path.root
        self.attribute = path.attribute
        self.globs: tuple[re.Pattern[str] | str, ...] = tuple(
            re.compile(translate(segment)) if any(c in segment for c in "*?[") else segment
            for segment in path.rest
        )

    def matches(self, event: EventBase) -> list[tuple[Key, ...]]:
        """Every existing place the pattern names in ``event``, as keys under its root."""
        root = getattr(event, self.attribute, None)
        if not isinstance(root, dict):
            return []
        return list(self._walk(root, 0, ()))

    def _walk(self, value: Any, depth: int, keys: tuple[Key, ...]) -> Iterator[tuple[Key, ...]]:
        glob = self.globs[depth]
        last = depth == len(self.globs) - 1
        if isinstance(glob, str):
            if isinstance(value, dict) and glob in value:
                found: list[tuple[Key, Any]] = [(glob, value[glob])]
            elif isinstance(value, list) and glob.isdigit() and int(glob) < len(value):
                found = [(int(glob), value[int(glob)])]
            else:
                return
        elif isinstance(value, dict):
            found = [(key, item) for key, item in value.items() if glob.fullmatch(str(key))]
        elif isinstance(value, list):
            found = list(enumerate(value))
        else:
            return
        for key, item in found:
            if last:
                yield (*keys, key)
            else:
                yield from self._walk(item, depth + 1, (*keys, key))


class EventEdit:
    """Edits of one event, copy-on-write. ``event`` is the event with the edits so far (the
    original until the first edit); ``changes`` lists what changed, in words."""

    __slots__ = ("_owned", "changes", "event", "original")

    def __init__(self, event: EventBase) -> None:
        self.original = event
        self.event = event
        self.changes: list[str] = []
        self._owned: set[int] = set()

    @property
    def changed(self) -> bool:
        return self.event is not self.original

    def _own_event(self) -> EventBase:
        if self.event is self.original:
            self.event = msgspec.structs.replace(self.original)
        return self.event

    def _container(self, attribute: str, keys: tuple[Key, ...], create: bool) -> Any:
        """The owned container holding ``keys[-1]`` (copying the way there), or a string
        saying what is in the way."""
        inner = keys[:-1]
        # Look along the way first: nothing is copied or created when the edit cannot be made.
        value: Any = getattr(self.event, attribute)
        for depth, key in enumerate(inner):
            value = value.get(key, MISSING) if type(value) is dict else _get(value, key)
            if value is MISSING or value is None:
                if not create:
                    return f"{path_text(_ROOT_NAMES[attribute], inner[: depth + 1])} is missing"
                break
            if not isinstance(value, dict | list):
                where = path_text(_ROOT_NAMES[attribute], inner[: depth + 1])
                return f"{where} is {kind_of(value)}, not an object"
        if self.event is self.original:
            self.event = msgspec.structs.replace(self.original)
        event, owned = self.event, self._owned
        container: Any = getattr(event, attribute)
        if id(container) not in owned:
            container = dict(container)
            owned.add(id(container))
            setattr(event, attribute, container)
        for key in inner:
            child = container.get(key, MISSING) if type(container) is dict else _get(container, key)
            if child is MISSING or child is None:
                child = {}
                owned.add(id(child))
                if _put(container, key, child) is not None:
                    return f"{path_text(_ROOT_NAMES[attribute], inner)} cannot be set"
            elif id(child) not in owned:
                child = dict(child) if type(child) is dict else list(child)
                owned.add(id(child))
                _put(container, key, child)
            container = child
        return container

    def get_at(self, attribute: str, keys: tuple[Key, ...]) -> Any:
        """The value at ``keys`` under the object field ``attribute`` now, or ``MISSING``."""
        value: Any = getattr(self.event, attribute, MISSING)
        for key in keys:
            value = value.get(key, MISSING) if type(value) is dict else _get(value, key)
            if value is MISSING:
                break
        return value

    def merge_at(
        self, attribute: str, keys: tuple[Key, ...], values: dict[str, Any], *, overwrite: bool
    ) -> list[str]:
        """Merge ``values`` into the object at ``keys`` (created when missing), replacing what
        it holds only when ``overwrite``; the keys that changed. One copy, however many keys."""
        current = self.get_at(attribute, keys)
        if current is MISSING or current is None:
            merged = dict(values)
        elif isinstance(current, dict):
            merged = {**current, **values} if overwrite else {**values, **current}
            if merged == current:
                return []
        else:
            return []
        if self.set_at(attribute, keys, merged) is not None:
            return []
        if current is MISSING or current is None:
            return list(values)
        return [key for key in values if current.get(key, MISSING) != merged[key]]

    def set(self, path: EventPath, value: Any) -> str | None:
        """Set ``path`` to ``value`` (creating objects on the way); None, or what prevented it."""
        if not path.applies_to(self.event):
            return f"{self.event.type} events have no {path.root}"
        if path.root in TEXT_FIELDS:
            if not isinstance(value, str):
                return f"{path.root} takes text, not {kind_of(value)}"
            setattr(self._own_event(), path.attribute, value)
            return None
        return self.set_at(path.attribute, path.rest, value)

    def set_at(self, attribute: str, keys: tuple[Key, ...], value: Any) -> str | None:
        """Set the place ``keys`` under the object field ``attribute``."""
        if not isinstance(getattr(self.event, attribute, None), dict) or not keys:
            return f"{self.event.type} events have no {_ROOT_NAMES[attribute]}"
        container = self._container(attribute, keys, create=True)
        if type(container) is dict:
            container[keys[-1]] = value
            return None
        if isinstance(container, str):
            return container
        return _put(container, keys[-1], value)

    def pop(self, path: EventPath) -> Any:
        """Remove ``path``; its value, or ``MISSING`` when it was not there."""
        if path.root in TEXT_FIELDS:
            value = getattr(self.event, path.attribute, None)
            if value is None or path.attribute in _REQUIRED_TEXT:
                return MISSING
            setattr(self._own_event(), path.attribute, None)
            return value
        return self.pop_at(path.attribute, path.rest)

    def pop_at(self, attribute: str, keys: tuple[Key, ...]) -> Any:
        """Remove the place ``keys`` under the object field ``attribute`` (as ``pop``)."""
        value: Any = getattr(self.event, attribute, None)
        if not isinstance(value, dict) or not keys:
            return MISSING  # an alias has no properties: nothing to remove
        # Look before copying: removing what is not there changes nothing.
        for key in keys:
            value = _get(value, key)
            if value is MISSING:
                return MISSING
        container = self._container(attribute, keys, create=False)
        if isinstance(container, str):
            return MISSING
        if isinstance(container, dict):
            return container.pop(keys[-1], MISSING)
        if isinstance(container, list) and isinstance(keys[-1], int):
            return container.pop(keys[-1])
        return MISSING


_ROOT_NAMES = {attribute: name for name, attribute in OBJECT_FIELDS.items()}


def _get(container: Any, key: Key) -> Any:
    if isinstance(container, dict):
        return container.get(key, MISSING)  # type: ignore[arg-type]
    if isinstance(container, list):
        index = key if isinstance(key, int) else int(key) if key.isdigit() else -1
        return container[index] if 0 <= index < len(container) else MISSING
    return MISSING


def _put(container: Any, key: Key, value: Any) -> str | None:
    if isinstance(container, dict):
        container[key] = value
        return None
    if isinstance(container, list):
        index = key if isinstance(key, int) else int(key) if key.isdigit() else -1
        if 0 <= index < len(container):
            container[index] = value
            return None
        return f"index {key} is outside the list"
    return "not an object"


def path_text(root: str, keys: tuple[Key, ...]) -> str:
    """A concrete place as a dotted path (``properties.items.0.sku``), dots in keys escaped."""
    parts = [root, *(str(key).replace("\\", "\\\\").replace(".", "\\.") for key in keys)]
    return ".".join(parts)


__all__ = [
    "FIELDS",
    "MISSING",
    "OBJECT_FIELDS",
    "TEXT_FIELDS",
    "EventEdit",
    "EventPath",
    "PathError",
    "PathPattern",
    "kind_of",
    "path_text",
]


def edit_events(
    events: list[Event],
    source: Source,
    name: str,
    edit_one: Callable[[EventEdit, list[str]], None],
    *,
    applies: Callable[[EventBase], bool] | None = None,
    describe: Callable[[list[str]], str] = ", ".join,
) -> StageResult | None:
    """A transform that edits events one by one, as a batch: ``edit_one(edit, problems)``
    changes an event through its ``EventEdit`` (recording each change in ``edit.changes``) and
    notes in ``problems`` what it could not do (a path missing, of the wrong type).

    Returns None when nothing changed and nothing is to be said; else the batch (copied from the
    first changed event on: events before it are the caller's own) and, per event, a
    ``transformed`` outcome (``describe(edit.changes)``) and a ``skipped`` one for its problems,
    each naming the transform instance ``name``.
    """
    out: list[Event] | None = None
    outcomes: list[Outcome] = []
    for position, event in enumerate(events):
        if applies is not None and not applies(event):
            if out is not None:
                out.append(event)
            continue
        edit = EventEdit(event)
        problems: list[str] = []
        edit_one(edit, problems)
        if edit.changed:
            if out is None:
                out = events[:position]
            out.append(edit.event)  # type: ignore[arg-type]
            outcomes.append(
                _outcome(edit.event, source, "transformed", name, describe(edit.changes))
            )
        elif out is not None:
            out.append(event)
        if problems:
            outcomes.append(_outcome(edit.event, source, "skipped", name, "; ".join(problems)))
    if out is None and not outcomes:
        return None
    return StageResult(events=out if out is not None else events, outcomes=outcomes)


def _outcome(
    event: EventBase, source: Source, status: StageStatus, name: str, detail: str
) -> Outcome:
    return Outcome(
        stage="transform",
        status=status,
        message_id=event.message_id,
        source_id=source.id,
        reason=name,
        detail=detail,
        event=event,  # type: ignore[arg-type]
    )
