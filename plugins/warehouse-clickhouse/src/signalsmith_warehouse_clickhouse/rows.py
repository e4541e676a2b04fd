"""Events as table rows, in Segment's warehouse layout (the reference, section 6).

Each event becomes one row in its type's table, a track also one in its event's own table, an
identify with a userId also one in ``users``, and a group one in ``accounts``. Fixed columns come
from the event's common fields; ``context`` is flattened into ``context_*`` columns, properties
and traits into columns of their own (nested keys joined with ``_``, arrays kept as JSON text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from signalsmith import Alias, Event, Group, Identify, Page, Screen, Track
from signalsmith_warehouse_clickhouse.naming import column_name
from signalsmith_warehouse_clickhouse.values import infer, sent_as, text_of

TIMESTAMP = "DateTime64(3, 'UTC')"
# Microseconds: the version column of every table, so a later load of the same id wins.
LOADED_AT = "DateTime64(6, 'UTC')"

EVENT_COLUMNS: dict[str, str] = {
    "id": "String",
    "received_at": TIMESTAMP,
    "sent_at": f"Nullable({TIMESTAMP})",
    "original_timestamp": f"Nullable({TIMESTAMP})",
    "timestamp": TIMESTAMP,
    "user_id": "Nullable(String)",
    "anonymous_id": "Nullable(String)",
    # Segment keeps a schema per source; here every source shares the tables and this says
    # which one sent the row.
    "source_id": "String",
    "loaded_at": LOADED_AT,
}
FIXED_COLUMNS: dict[str, dict[str, str]] = {
    "tracks": {**EVENT_COLUMNS, "event": "String", "event_text": "String"},
    "identifies": EVENT_COLUMNS,
    "pages": {**EVENT_COLUMNS, "name": "Nullable(String)", "category": "Nullable(String)"},
    "screens": {**EVENT_COLUMNS, "name": "Nullable(String)", "category": "Nullable(String)"},
    "groups": {**EVENT_COLUMNS, "group_id": "String"},
    "aliases": {**EVENT_COLUMNS, "previous_id": "String"},
    # Latest traits per user_id / group_id (see the README for how they merge).
    "users": {"id": "String", "received_at": TIMESTAMP, "loaded_at": LOADED_AT},
    "accounts": {
        "id": "String",
        "received_at": TIMESTAMP,
        "user_id": "Nullable(String)",
        "loaded_at": LOADED_AT,
    },
}
PROFILE_TABLES = ("users", "accounts")

# Nesting deeper than this is kept as the JSON text of the rest, in one column.
MAX_DEPTH = 32


def fixed_columns(table: str) -> dict[str, str]:
    """The columns every row of ``table`` has; an event's own table has the track columns."""
    return FIXED_COLUMNS.get(table) or FIXED_COLUMNS["tracks"]


@dataclass(slots=True)
class Row:
    """One row to write: its fixed columns, and the flattened context/properties/traits.

    ``values`` hold each leaf as the client sent it (an array as a list); the warehouse checks
    it against its column's kind, which for almost every value is one type check.
    """

    table: str
    # The row's `id`: the messageId, or the user_id / group_id in users / accounts.
    row_id: str
    message_id: str
    received_at: datetime
    fixed: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Discard:
    """A value that was not written to its column, and why (a row of the `discards` table)."""

    table_name: str
    column_name: str
    row_id: str
    value: str
    value_type: str
    column_type: str
    # type_conflict, column_limit, reserved_column or duplicate_column.
    reason: str
    received_at: datetime


class _KeyNode:
    """One key of a key-path trie: its column name (made on first use) and the keys under it.

    The same few hundred key paths come back in every event, so each is snake-cased once and
    found again by walking the event's own keys, without building a path to look up.
    """

    __slots__ = ("children", "column", "path")

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path
        self.column: str | None = None
        self.children: dict[Any, _KeyNode] = {}


# One trie per column prefix ("" for properties and traits, "context_"). Reset when it grows
# past this many keys, so events that use ids as keys cannot grow it without bound.
MAX_CACHED_KEYS = 100_000
_tries: dict[str, _KeyNode] = {}
_cached_keys = 0


def flatten(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(column, value)`` for every non-null leaf of ``obj``, in the client's key order.

    Objects are descended into (their keys joined with ``_``); past ``MAX_DEPTH`` levels the
    rest is kept as JSON text in one column.
    """
    global _cached_keys
    if _cached_keys > MAX_CACHED_KEYS:
        _tries.clear()
        _cached_keys = 0
    root = _tries.get(prefix)
    if root is None:
        root = _tries[prefix] = _KeyNode(())
    found: list[tuple[str, Any]] = []
    _flatten_into(obj, root, prefix, found)
    return found


def _flatten_into(
    obj: dict[str, Any], node: _KeyNode, prefix: str, found: list[tuple[str, Any]]
) -> None:
    global _cached_keys
    children = node.children
    for key, raw in obj.items():
        child = children.get(key)
        if child is None:
            child = children[key] = _KeyNode((*node.path, str(key)))
            _cached_keys += 1
        if type(raw) is dict and len(child.path) < MAX_DEPTH:
            _flatten_into(raw, child, prefix, found)
            continue
        if raw is not None:
            column = child.column
            if column is None:
                column = child.column = column_name(child.path, prefix)
            found.append((column, raw))


def put(row: Row, values: list[tuple[str, Any]], discards: list[Discard]) -> None:
    """Add flattened values to ``row``: a name taken by a fixed column or an earlier value of
    the same row is discarded (silently when it repeats the fixed column's own value)."""
    for name, value in values:
        if name in row.fixed:
            current = row.fixed[name]
            if current is not None and (
                infer(value)[1] == current or text_of(value) == str(current)
            ):
                continue
            reason = "reserved_column"
        elif name in row.values:
            reason = "duplicate_column"
        else:
            row.values[name] = value
            continue
        discards.append(
            Discard(
                table_name=row.table,
                column_name=name,
                row_id=row.row_id,
                value=text_of(value),
                value_type=sent_as(value),
                column_type="",
                reason=reason,
                received_at=row.received_at,
            )
        )


def event_rows(
    event: Event, loaded_at: datetime, event_table: Callable[[str], str]
) -> tuple[list[Row], list[Discard]]:
    """The rows one event becomes, and the values set aside while flattening it."""
    discards: list[Discard] = []
    # Flattened once and copied into each of the event's rows. No fixed column starts with
    # "context_", so only two context keys that snake-case alike can clash.
    context: dict[str, Any] = {}
    clashing: list[tuple[str, Any]] = []
    if event.context:
        for name, value in flatten(event.context, "context_"):
            if name in context:
                clashing.append((name, value))
            else:
                context[name] = value
    common: dict[str, Any] = {
        "id": event.message_id,
        "received_at": event.received_at,
        "sent_at": event.sent_at,
        "original_timestamp": event.original_timestamp,
        "timestamp": event.timestamp,
        "user_id": event.user_id,
        "anonymous_id": event.anonymous_id,
        "source_id": event.project_id,
        "loaded_at": loaded_at,
    }

    def row(table: str, fixed: dict[str, Any], *extra: list[tuple[str, Any]]) -> Row:
        made = Row(table, event.message_id, event.message_id, event.received_at, fixed)
        made.values = dict(context)
        if clashing:
            put(made, clashing, discards)
        for values in extra:
            put(made, values, discards)
        return made

    if isinstance(event, Track):
        table = event_table(event.event)
        fixed = {**common, "event": table, "event_text": event.event}
        properties = flatten(event.properties)
        return [row("tracks", fixed), row(table, dict(fixed), properties)], discards
    if isinstance(event, Identify):
        traits = flatten(event.traits)
        rows = [row("identifies", common, traits)]
        if event.user_id:
            rows.append(_profile("users", event.user_id, event, loaded_at, traits, discards))
        return rows, discards
    if isinstance(event, Page | Screen):
        table = "pages" if isinstance(event, Page) else "screens"
        # analytics.js repeats the name in properties; the column takes either.
        name = event.name if event.name is not None else _text_or_none(event.properties, "name")
        category = event.category
        if category is None:
            category = _text_or_none(event.properties, "category")
        fixed = {**common, "name": name, "category": category}
        return [row(table, fixed, flatten(event.properties))], discards
    if isinstance(event, Group):
        traits = flatten(event.traits)
        rows = [row("groups", {**common, "group_id": event.group_id}, traits)]
        rows.append(_profile("accounts", event.group_id, event, loaded_at, traits, discards))
        return rows, discards
    if isinstance(event, Alias):
        return [row("aliases", {**common, "previous_id": event.previous_id})], discards
    raise TypeError(f"no warehouse table for event type {type(event).__name__}")


def _profile(
    table: str,
    row_id: str,
    event: Event,
    loaded_at: datetime,
    traits: list[tuple[str, Any]],
    discards: list[Discard],
) -> Row:
    fixed: dict[str, Any] = {"id": row_id, "received_at": event.received_at, "loaded_at": loaded_at}
    if table == "accounts":
        fixed["user_id"] = event.user_id
    profile = Row(table, row_id, event.message_id, event.received_at, fixed)
    put(profile, traits, discards)
    return profile


def _text_or_none(properties: dict[str, Any], key: str) -> str | None:
    value = properties.get(key)
    return value if isinstance(value, str) else None
