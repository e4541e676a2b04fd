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
from typing import Any, TypeAlias

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


# A flattened leaf: its column, its value as sent, and its key path under its object.
Leaf: TypeAlias = tuple[str, Any, tuple[str, ...]]


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
    # Where ``values`` came from, in the order they were put: (the event's field, its leaves).
    # Only read to name a value's key path in `discards`.
    sources: tuple[tuple[str, list[Leaf]], ...] = ()
    _key_paths: dict[str, tuple[str, ...]] | None = None

    def key_path(self, column: str) -> tuple[str, ...]:
        """The key path, as the client sent it, of the value ``values[column]`` holds."""
        if self._key_paths is None:
            # Built once per row that has a value set aside: a wide row may have many.
            paths: dict[str, tuple[str, ...]] = {}
            for root, leaves in self.sources:
                for name, _, path in leaves:
                    # The first leaf of a column is the one it holds (see ``put``).
                    paths.setdefault(name, (root, *path))
            self._key_paths = paths
        return self._key_paths.get(column, ())


@dataclass(slots=True, frozen=True)
class Discard:
    """A value that was not written to its column, and why (a row of the `discards` table)."""

    table_name: str
    column_name: str
    # The key path of the value in the call as sent (``("properties", "x y")``): several keys
    # can make one column name.
    key_path: tuple[str, ...]
    row_id: str
    # The call the value came from (the row's id, except in users and accounts).
    message_id: str
    value: str
    value_type: str
    column_type: str
    # type_conflict, column_limit, reserved_column, duplicate_column, event_table_limit or
    # new_table_limit.
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


# A flattener forgets its key paths when it knows more than this many, so events that use ids
# as keys cannot grow it without bound.
MAX_CACHED_KEYS = 100_000


class Flattener:
    """Flattens objects into columns, remembering each key path's column name: one per
    warehouse (kept on the object, not in the module, so two warehouses share nothing)."""

    __slots__ = ("_cached_keys", "_tries")

    def __init__(self) -> None:
        # One trie per column prefix ("" for properties and traits, "context_").
        self._tries: dict[str, _KeyNode] = {}
        self._cached_keys = 0

    def flatten(self, obj: dict[str, Any], prefix: str = "") -> list[Leaf]:
        """``(column, value, key path)`` for every non-null leaf of ``obj``, in the client's
        key order.

        Objects are descended into (their keys joined with ``_``); past ``MAX_DEPTH`` levels
        the rest is kept as JSON text in one column.
        """
        if self._cached_keys > MAX_CACHED_KEYS:
            self._tries.clear()
            self._cached_keys = 0
        root = self._tries.get(prefix)
        if root is None:
            root = self._tries[prefix] = _KeyNode(())
        found: list[Leaf] = []
        self._flatten_into(obj, root, prefix, found)
        return found

    def _flatten_into(
        self, obj: dict[str, Any], node: _KeyNode, prefix: str, found: list[Leaf]
    ) -> None:
        children = node.children
        for key, raw in obj.items():
            child = children.get(key)
            if child is None:
                child = children[key] = _KeyNode((*node.path, str(key)))
                self._cached_keys += 1
            if type(raw) is dict and len(child.path) < MAX_DEPTH:
                self._flatten_into(raw, child, prefix, found)
                continue
            if raw is not None:
                column = child.column
                if column is None:
                    column = child.column = column_name(child.path, prefix)
                found.append((column, raw, child.path))


def put(row: Row, root: str, values: list[Leaf], discards: list[Discard]) -> None:
    """Add flattened values of the event's ``root`` field to ``row``: a name taken by a fixed
    column or an earlier value of the same row is discarded (silently when it repeats the fixed
    column's own value)."""
    for name, value, path in values:
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
                key_path=(root, *path),
                row_id=row.row_id,
                message_id=row.message_id,
                value=text_of(value),
                value_type=sent_as(value),
                column_type="",
                reason=reason,
                received_at=row.received_at,
            )
        )


def event_rows(
    event: Event,
    loaded_at: datetime,
    event_table: Callable[[str], str | None],
    flattener: Flattener,
) -> tuple[list[Row], list[Discard]]:
    """The rows one event becomes, and the values set aside while flattening it.

    ``event_table`` names a track's own table; a track whose name has none (it is over a cap,
    see the warehouse) is a row in ``tracks`` only, and its caller keeps its properties.
    """
    discards: list[Discard] = []
    # Flattened once and copied into each of the event's rows. No fixed column starts with
    # "context_", so only two context keys that snake-case alike can clash.
    context: dict[str, Any] = {}
    clashing: list[Leaf] = []
    leaves: list[Leaf] = []
    if event.context:
        leaves = flattener.flatten(event.context, "context_")
        for leaf in leaves:
            if leaf[0] in context:
                clashing.append(leaf)
            else:
                context[leaf[0]] = leaf[1]
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

    def row(
        table: str, fixed: dict[str, Any], root: str = "", extra: list[Leaf] | None = None
    ) -> Row:
        made = Row(table, event.message_id, event.message_id, event.received_at, fixed)
        made.values = dict(context)
        if clashing:
            put(made, "context", clashing, discards)
        if extra is None:
            made.sources = (("context", leaves),)
        else:
            put(made, root, extra, discards)
            made.sources = (("context", leaves), (root, extra))
        return made

    if isinstance(event, Track):
        table = event_table(event.event)
        fixed = {**common, "event": table or "", "event_text": event.event}
        if table is None:
            return [row("tracks", fixed)], discards
        properties = flattener.flatten(event.properties)
        return [row("tracks", fixed), row(table, dict(fixed), "properties", properties)], discards
    if isinstance(event, Identify):
        traits = flattener.flatten(event.traits)
        rows = [row("identifies", common, "traits", traits)]
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
        return [row(table, fixed, "properties", flattener.flatten(event.properties))], discards
    if isinstance(event, Group):
        traits = flattener.flatten(event.traits)
        rows = [row("groups", {**common, "group_id": event.group_id}, "traits", traits)]
        rows.append(_profile("accounts", event.group_id, event, loaded_at, traits, discards))
        return rows, discards
    if isinstance(event, Alias):
        return [row("aliases", {**common, "previous_id": event.previous_id})], discards
    raise TypeError(f"no warehouse table for event type {type(event).__name__}")


def untabled_properties(event: Track, reason: str) -> Discard:
    """The properties of a track that has no table of its own, whole, as a `discards` row."""
    return Discard(
        table_name="tracks",
        column_name="properties",
        key_path=("properties",),
        row_id=event.message_id,
        message_id=event.message_id,
        value=text_of(event.properties),
        value_type="object",
        column_type="",
        reason=reason,
        received_at=event.received_at,
    )


def _profile(
    table: str,
    row_id: str,
    event: Event,
    loaded_at: datetime,
    traits: list[Leaf],
    discards: list[Discard],
) -> Row:
    fixed: dict[str, Any] = {"id": row_id, "received_at": event.received_at, "loaded_at": loaded_at}
    if table == "accounts":
        fixed["user_id"] = event.user_id
    profile = Row(table, row_id, event.message_id, event.received_at, fixed)
    put(profile, "traits", traits, discards)
    profile.sources = (("traits", traits),)
    return profile


def _text_or_none(properties: dict[str, Any], key: str) -> str | None:
    value = properties.get(key)
    return value if isinstance(value, str) else None
