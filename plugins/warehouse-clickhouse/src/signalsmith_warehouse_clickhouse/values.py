"""Column types: what a JSON value is inferred as, and whether it fits a column it meets.

Five kinds, as in Segment's warehouses: boolean, integer, float, string, timestamp (an ISO-8601
date-time string). Arrays are stored as their JSON text, in string columns. A column's kind is
fixed by the first batch that brings it; later values are cast only where nothing is lost
(an integer into a float column, any scalar into a string column) and otherwise discarded.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import msgspec


class Kind(Enum):
    BOOLEAN = "boolean"
    INTEGER = "integer"
    FLOAT = "float"
    STRING = "string"
    TIMESTAMP = "timestamp"
    # A column whose ClickHouse type this plugin did not create (changed by hand); nothing is
    # cast into it.
    OTHER = "other"


CLICKHOUSE_TYPES: dict[Kind, str] = {
    Kind.BOOLEAN: "Nullable(Bool)",
    Kind.INTEGER: "Nullable(Int64)",
    Kind.FLOAT: "Nullable(Float64)",
    Kind.STRING: "Nullable(String)",
    Kind.TIMESTAMP: "Nullable(DateTime64(3, 'UTC'))",
}

# DateTime64 holds 1900-01-01 to 2299-12-31; a date-time string outside that stays a string.
_MIN_YEAR, _MAX_YEAR = 1900, 2299
_ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Value:
    """One leaf value of an event: its kind, the value to insert, and what the client sent.

    A plain slotted class, not a frozen dataclass: one is made per property per event, and
    frozen dataclasses cost several times more to build.
    """

    __slots__ = ("kind", "raw", "sent_as", "value")

    def __init__(self, kind: Kind, value: Any, raw: Any, sent_as: str) -> None:
        self.kind = kind
        self.value = value
        # What the client sent (an array as its JSON text), rendered by ``text`` on demand.
        self.raw = raw
        # "array" for arrays (stored as JSON text), else the kind's name: what discards report.
        self.sent_as = sent_as

    @property
    def text(self) -> str:
        """The client's own rendering, for casts to string and for the discards table: the
        original string for strings and timestamps, JSON text for everything else."""
        raw = self.raw
        if isinstance(raw, str):
            return raw
        if isinstance(raw, bool):
            return "true" if raw else "false"
        if isinstance(raw, int):
            return str(raw)
        if isinstance(raw, datetime):
            return raw.isoformat()
        return _json_text(raw)

    def __repr__(self) -> str:
        return f"Value({self.kind.name}, {self.value!r})"


def parse_timestamp(text: str) -> datetime | None:
    """An aware UTC datetime for an ISO-8601 date-time string, else None.

    A string without a zone is taken as UTC, like the rest of an event's timestamps.
    """
    if len(text) < 16 or len(text) > 40 or not _ISO_DATETIME.fullmatch(text):
        return None
    normalised = text.replace(",", ".")
    if normalised[-1] in "Zz":
        normalised = normalised[:-1] + "+00:00"
    # Python takes at most 6 fractional digits; ClickHouse keeps 3 here anyway.
    normalised = re.sub(r"(\.\d{6})\d+", r"\1", normalised)
    try:
        parsed = datetime.fromisoformat(normalised)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    if not _MIN_YEAR <= parsed.year <= _MAX_YEAR:
        return None
    return parsed


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def infer(value: Any) -> Value | None:
    """The ``Value`` for a leaf (not a dict); None for null, which creates and fills nothing."""
    # Exact type checks first: this runs for every property of every event.
    kind = type(value)
    if kind is str:
        # Cheap shape check before the regex: most strings are not date-times.
        if len(value) >= 16 and value[4:5] == "-" and value[:4].isdigit():
            parsed = parse_timestamp(value)
            if parsed is not None:
                return Value(Kind.TIMESTAMP, parsed, value, "timestamp")
        return Value(Kind.STRING, value, value, "string")
    if value is None:
        return None
    # bool before int: Python's bool is an int.
    if kind is bool:
        return Value(Kind.BOOLEAN, value, value, "boolean")
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return Value(Kind.INTEGER, value, value, "integer")
        # Past Int64 a JSON number is only meaningful as a double (as in JavaScript).
        return Value(Kind.FLOAT, float(value), value, "integer")
    if kind is float:
        return Value(Kind.FLOAT, value, value, "float")
    if isinstance(value, list | tuple):
        text = _json_text(value)
        return Value(Kind.STRING, text, text, "array")
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return Value(Kind.TIMESTAMP, aware.astimezone(UTC), aware, "timestamp")
    # Subclasses of the plain types (IntEnum...), and anything else a plugin may have put in.
    for plain in (int, float, str):
        if isinstance(value, plain):
            return infer(plain(value))
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else _json_text(value)
    return Value(Kind.STRING, text, text, "string")


def kind_of_type(clickhouse_type: str) -> Kind:
    """The kind of an existing column, from its ClickHouse type name."""
    name = clickhouse_type
    for wrapper in ("Nullable(", "LowCardinality("):
        while name.startswith(wrapper) and name.endswith(")"):
            name = name[len(wrapper) : -1]
    if name == "Bool":
        return Kind.BOOLEAN
    if name.startswith(("Int", "UInt")):
        return Kind.INTEGER
    if name.startswith(("Float", "Decimal")):
        return Kind.FLOAT
    if name in ("String", "UUID") or name.startswith(("FixedString", "Enum")):
        return Kind.STRING
    if name.startswith(("DateTime", "Date")):
        return Kind.TIMESTAMP
    return Kind.OTHER


class Conflict(Exception):
    """A value that does not fit its column (it goes to `discards`)."""


def cast(value: Value, column: Kind) -> Any:
    """The value to insert into a column of kind ``column``; raises ``Conflict`` if it can't be.

    Only lossless casts: integer into float, and any scalar into string (as the client's text).
    """
    if value.kind is column:
        return value.value
    if column is Kind.FLOAT and value.kind is Kind.INTEGER:
        return float(value.value)
    if column is Kind.STRING and value.kind is not Kind.OTHER:
        return value.text
    raise Conflict


def merged_kind(kinds: list[Kind]) -> Kind:
    """The kind a new column gets from the values one batch brings for it, in order.

    Integers and floats together make a float column; otherwise the most recent value decides,
    as in Segment ("within a batch that discovers a new column, the most recent occurrence
    picks the type").
    """
    distinct = set(kinds)
    if distinct == {Kind.INTEGER, Kind.FLOAT}:
        return Kind.FLOAT
    return kinds[-1]
