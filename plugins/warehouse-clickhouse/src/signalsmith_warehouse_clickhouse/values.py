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
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


def infer(raw: Any) -> tuple[Kind, Any]:
    """The kind a leaf value (not null, not a dict) is inferred as, and its value in a column
    of that kind: a parsed datetime for a timestamp, JSON text for an array."""
    # Exact type checks first: this runs for every new column and every value that is not
    # already of its column's own Python type.
    kind = type(raw)
    if kind is str:
        # Cheap shape check before the regex: most strings are not date-times.
        if len(raw) >= 16 and raw[4:5] == "-" and raw[:4].isdigit():
            parsed = parse_timestamp(raw)
            if parsed is not None:
                return Kind.TIMESTAMP, parsed
        return Kind.STRING, raw
    # bool before int: Python's bool is an int.
    if kind is bool:
        return Kind.BOOLEAN, raw
    if kind is int:
        if INT64_MIN <= raw <= INT64_MAX:
            return Kind.INTEGER, raw
        # Past Int64 a JSON number is only meaningful as a double (as in JavaScript).
        return Kind.FLOAT, float(raw)
    if kind is float:
        return Kind.FLOAT, raw
    if isinstance(raw, list | tuple):
        return Kind.STRING, _json_text(raw)
    if isinstance(raw, datetime):
        aware = raw if raw.tzinfo else raw.replace(tzinfo=UTC)
        return Kind.TIMESTAMP, aware.astimezone(UTC)
    # Subclasses of the plain types (IntEnum...), and anything else a plugin may have put in.
    for plain in (bool, int, float, str):
        if isinstance(raw, plain):
            return infer(plain(raw))
    return Kind.STRING, text_of(raw)


def sent_as(raw: Any) -> str:
    """What the client sent, as the discards table names it: "array" for arrays (stored as
    JSON text), else the name of the kind it is inferred as."""
    if isinstance(raw, list | tuple):
        return "array"
    kind, _ = infer(raw)
    if kind is Kind.FLOAT and isinstance(raw, int):
        return "integer"
    return kind.value


def text_of(raw: Any) -> str:
    """The client's own rendering of a value, for casts to string and for the discards table:
    the original string for strings and timestamps, JSON text for everything else."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, datetime):
        return raw.isoformat()
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return _json_text(raw)


def _unwrapped(clickhouse_type: str) -> str:
    """The type inside ``Nullable(...)`` and ``LowCardinality(...)``, in either order."""
    name = clickhouse_type
    while name.endswith(")"):
        for wrapper in ("Nullable(", "LowCardinality("):
            if name.startswith(wrapper):
                name = name[len(wrapper) : -1]
                break
        else:
            return name
    return name


def is_date_type(clickhouse_type: str) -> bool:
    """Whether a column holds dates without a time (``Date``, ``Date32``)."""
    return _unwrapped(clickhouse_type) in ("Date", "Date32")


def kind_of_type(clickhouse_type: str) -> Kind:
    """The kind of an existing column, from its ClickHouse type name."""
    name = _unwrapped(clickhouse_type)
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


# The Python type a value already has when it goes into a column of a kind as it is. An int
# also needs to be within Int64; everything else goes through ``cast``.
AS_IT_IS: dict[Kind, type] = {
    Kind.STRING: str,
    Kind.INTEGER: int,
    Kind.FLOAT: float,
    Kind.BOOLEAN: bool,
}


def cast(raw: Any, column: Kind) -> Any:
    """The value to insert into a column of kind ``column``; raises ``Conflict`` if it can't be.

    Only lossless casts: integer into float, and any scalar into string (as the client's text).
    """
    kind, value = infer(raw)
    if kind is column:
        return value
    if column is Kind.FLOAT and kind is Kind.INTEGER:
        return float(value)
    if column is Kind.STRING:
        return text_of(raw)
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
