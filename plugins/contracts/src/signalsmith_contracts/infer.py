"""Drafting a plan from the events a source already sent, as the warehouse holds them.

The warehouse is read through the admin API's read-only SQL (``POST /api/v1/admin/sql``, what
``signalsmith sql`` uses), so this plugin needs no warehouse code. Each track event of the source
gets a TRACK rule with the columns its table has: the type seen (from the column's type), and
``required`` for a column present in every one of the source's rows; identify calls give an
IDENTIFY rule for traits. The warehouse keeps snake_case column names and flattens nested
objects (``product_sku``), so a drafted plan names properties as the warehouse does: review it
before enforcing it.
"""

from __future__ import annotations

from typing import Any, Protocol

from signalsmith_contracts.plans import DRAFT_07, Rule, TrackingPlan

# The warehouse's own columns: not properties or traits.
COMMON_COLUMNS = frozenset(
    {
        "id",
        "received_at",
        "sent_at",
        "original_timestamp",
        "timestamp",
        "user_id",
        "anonymous_id",
        "source_id",
        "loaded_at",
        "event",
        "event_text",
        "uuid_ts",
    }
)


class Query(Protocol):
    def __call__(self, sql: str) -> tuple[list[str], list[list[Any]]]: ...


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def json_schema_type(column_type: str) -> dict[str, Any]:
    """The JSON Schema type of values in a warehouse column of ``column_type``."""
    inner = column_type
    nullable = inner.startswith("Nullable(")
    if nullable:
        inner = inner[len("Nullable(") : -1]
    inner = (
        inner.removeprefix("LowCardinality(").removesuffix(")")
        if inner.startswith("LowCardinality(")
        else inner
    )
    if inner.startswith(("Int", "UInt")):
        schema: dict[str, Any] = {"type": "integer"}
    elif inner.startswith(("Float", "Decimal")):
        schema = {"type": "number"}
    elif inner == "Bool":
        schema = {"type": "boolean"}
    elif inner.startswith("DateTime") or inner.startswith("Date"):
        schema = {"type": "string", "format": "date-time"}
    else:
        schema = {"type": "string"}
    return schema


def _columns(query: Query, table: str) -> dict[str, str]:
    _, rows = query(f"DESCRIBE TABLE {identifier(table)}")
    return {
        str(row[0]): str(row[1])
        for row in rows
        if str(row[0]) not in COMMON_COLUMNS and not str(row[0]).startswith("context_")
    }


def _presence(query: Query, table: str, columns: list[str], source: str) -> tuple[int, list[int]]:
    if not columns:
        _, rows = query(
            f"SELECT count() FROM {identifier(table)} WHERE source_id = {literal(source)}"
        )
        return int(rows[0][0]), []
    counts = ", ".join(f"countIf({identifier(column)} IS NOT NULL)" for column in columns)
    _, rows = query(
        f"SELECT count(), {counts} FROM {identifier(table)} WHERE source_id = {literal(source)}"
    )
    return int(rows[0][0]), [int(value) for value in rows[0][1:]]


def _object_schema(query: Query, table: str, source: str) -> tuple[dict[str, Any], int]:
    columns = _columns(query, table)
    names = sorted(columns)
    total, present = _presence(query, table, names, source)
    properties = {
        name: json_schema_type(columns[name])
        for name, seen in zip(names, present, strict=True)
        if seen
    }
    required = [name for name, seen in zip(names, present, strict=True) if total and seen == total]
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, total


def infer_plan(query: Query, source: str, *, name: str = "") -> TrackingPlan:
    """A draft plan from what the warehouse holds of ``source``'s events."""
    _, tables = query("SELECT event_text, table_name FROM _event_tables")
    table_of = {str(row[0]): str(row[1]) for row in tables}
    _, events = query(
        f"SELECT event_text, count() FROM tracks WHERE source_id = {literal(source)} "
        "GROUP BY event_text ORDER BY event_text"
    )
    rules: list[Rule] = []
    for event_text, _count in events:
        table = table_of.get(str(event_text))
        if table is None:
            continue
        inner, total = _object_schema(query, table, source)
        if not total:
            continue
        rules.append(
            Rule(
                type="TRACK",
                key=str(event_text),
                version=1,
                json_schema={
                    "$schema": DRAFT_07,
                    "type": "object",
                    "properties": {"context": {}, "traits": {}, "properties": inner},
                },
            )
        )
    _, tables_present = query("SHOW TABLES")
    if any(str(row[0]) == "identifies" for row in tables_present):
        traits, total = _object_schema(query, "identifies", source)
        if total:
            rules.append(
                Rule(
                    type="IDENTIFY",
                    json_schema={
                        "$schema": DRAFT_07,
                        "type": "object",
                        "properties": {"context": {}, "properties": {}, "traits": traits},
                    },
                )
            )
    return TrackingPlan(
        name=name or f"{source} (drafted from the warehouse)",
        description=f"Drafted by `signalsmith contracts infer --source {source}`: review it.",
        rules=rules,
    )
