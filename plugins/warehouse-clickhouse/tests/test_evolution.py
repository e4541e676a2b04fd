"""Schema evolution details beyond the conformance suite, against the real engine (chDB)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect

from signalsmith import Identify, Track
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse
from signalsmith_warehouse_clickhouse.naming import quote
from signalsmith_warehouse_clickhouse.rows import MAX_DEPTH

OpenWarehouse = Callable[..., Awaitable[ClickHouseWarehouse]]
_counter = iter(range(1_000_000))


def track(event: str, properties: dict[str, Any], **fields: Any) -> Track:
    now = datetime.now(UTC)
    return Track(
        message_id=f"m-{next(_counter):07d}",
        received_at=now,
        timestamp=now,
        event=event,
        properties=properties,
        **fields,
    )


def identify(message_id: str, traits: dict[str, Any], *, at: datetime) -> Identify:
    """An identify of user u-1; ``at`` is fixed by the test, so a redelivery is the same call."""
    return Identify(
        message_id=message_id, received_at=at, timestamp=at, user_id="u-1", traits=traits
    )


def change_by_hand(chdb_dir: Path, statement: str) -> None:
    """Run ``statement`` from a client of its own, as someone changing a table by hand would."""
    other = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    try:
        other.command(statement)
    finally:
        other.close()


async def rows(warehouse: ClickHouseWarehouse, sql: str) -> list[dict[str, Any]]:
    result = await warehouse.query(sql)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


async def column_types(warehouse: ClickHouseWarehouse, table: str) -> dict[str, str]:
    # DESCRIBE: `signalsmith sql` reads the warehouse's own tables only, not system.columns.
    return {row["name"]: row["type"] for row in await rows(warehouse, f"DESCRIBE {quote(table)}")}


async def test_in_one_batch_the_latest_value_picks_a_new_columns_type(
    open_warehouse: OpenWarehouse,
) -> None:
    warehouse = await open_warehouse()
    number_then_text = [track("A", {"code": 1}), track("A", {"code": "x1"})]
    text_then_number = [track("B", {"code": "x1"}), track("B", {"code": 1})]
    await warehouse.write(number_then_text + text_then_number)

    # Text last: a string column, and the number before it is kept as its text.
    assert (await column_types(warehouse, "a"))["code"] == "Nullable(String)"
    assert {r["code"] for r in await rows(warehouse, "SELECT code FROM a")} == {"1", "x1"}
    # Number last: an integer column; the text before it cannot be one and is set aside.
    assert (await column_types(warehouse, "b"))["code"] == "Nullable(Int64)"
    assert [r["code"] for r in await rows(warehouse, "SELECT code FROM b ORDER BY id")] == [
        None,
        1,
    ]
    [discard] = await rows(warehouse, "SELECT value, value_type, reason FROM discards")
    assert discard == {"value": "x1", "value_type": "string", "reason": "type_conflict"}


async def test_scalars_into_a_string_column_are_kept_as_text(open_warehouse: OpenWarehouse) -> None:
    warehouse = await open_warehouse()
    await warehouse.write([track("Note", {"label": "first"})])
    await warehouse.write(
        [
            track("Note", {"label": 42}),
            track("Note", {"label": True}),
            track("Note", {"label": 2.5}),
            track("Note", {"label": "2024-05-01T12:00:00Z"}),
            track("Note", {"label": [1, "a"]}),
        ]
    )
    labels = [r["label"] for r in await rows(warehouse, "SELECT label FROM note ORDER BY id")]
    assert labels == ["first", "42", "true", "2.5", "2024-05-01T12:00:00Z", '[1,"a"]']
    assert await rows(warehouse, "SELECT * FROM discards") == []


async def test_a_conflicting_trait_is_set_aside_and_the_users_other_traits_kept(
    open_warehouse: OpenWarehouse,
) -> None:
    warehouse = await open_warehouse()
    now = datetime.now(UTC)
    await warehouse.write([identify("i-1", {"age": 30, "name": "Ada"}, at=now)])
    await warehouse.write([identify("i-2", {"age": "thirty", "name": "Ada L."}, at=now)])

    assert await rows(warehouse, "SELECT id, age, name FROM users") == [
        {"id": "u-1", "age": 30, "name": "Ada L."}
    ]
    discards = await rows(
        warehouse, "SELECT table_name, row_id, value FROM discards ORDER BY table_name"
    )
    assert discards == [
        {"table_name": "identifies", "row_id": "i-2", "value": "thirty"},
        {"table_name": "users", "row_id": "u-1", "value": "thirty"},
    ]
    # Written again (a redelivery), the discards do not repeat.
    await warehouse.write([identify("i-2", {"age": "thirty", "name": "Ada L."}, at=now)])
    assert len(await rows(warehouse, "SELECT * FROM discards")) == 2


async def test_nesting_past_the_limit_is_kept_as_json(open_warehouse: OpenWarehouse) -> None:
    warehouse = await open_warehouse()
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_DEPTH + 3):
        deep = {"n": deep}
    await warehouse.write([track("Deep", {"tree": deep})])

    columns = await column_types(warehouse, "deep")
    [name] = [column for column in columns if column.startswith("tree_")]
    # "tree" and MAX_DEPTH - 1 levels of "n" make the column; the rest is its JSON value.
    assert name == "tree" + "_n" * (MAX_DEPTH - 1)
    rest: dict[str, Any] = {"leaf": 1}
    for _ in range(4):
        rest = {"n": rest}
    [row] = await rows(warehouse, f"SELECT `{name}` AS rest FROM deep")
    assert json.loads(row["rest"]) == rest


async def test_a_table_missing_a_fixed_column_gets_it(
    open_warehouse: OpenWarehouse, chdb_dir: Path, database: str
) -> None:
    warehouse = await open_warehouse()
    await warehouse.write([track("Old", {"x": 1})])
    change_by_hand(chdb_dir, f"ALTER TABLE {database}.old DROP COLUMN source_id")
    # A new process: it reads the table as it is now.
    again = await open_warehouse()
    await again.write([track("Old", {"x": 2}, project_id="web")])

    assert "source_id" in await column_types(again, "old")
    assert await rows(again, "SELECT x, source_id FROM old ORDER BY x") == [
        {"x": 1, "source_id": ""},
        {"x": 2, "source_id": "web"},
    ]


async def test_a_table_changed_behind_the_writer_is_seen(
    open_warehouse: OpenWarehouse, chdb_dir: Path, database: str
) -> None:
    warehouse = await open_warehouse()
    await warehouse.write([track("Changed", {"count": 1})])
    change_by_hand(chdb_dir, f"ALTER TABLE {database}.changed MODIFY COLUMN count Nullable(String)")

    # Within the schema's time to live the writer still takes `count` for an integer column;
    # an integer still lands (ClickHouse converts it on insert).
    await warehouse.write([track("Changed", {"count": 2})])
    # Past it, the column is read again: text now fits it instead of being set aside.
    warehouse.schema_ttl_seconds = 0
    await warehouse.write([track("Changed", {"count": "many"})])

    counts = [r["count"] for r in await rows(warehouse, "SELECT count FROM changed ORDER BY id")]
    assert counts == ["1", "2", "many"]
    assert await rows(warehouse, "SELECT * FROM discards") == []


async def test_values_at_the_edges_of_their_types_land_exactly(
    open_warehouse: OpenWarehouse,
) -> None:
    # Rows reach ClickHouse as JSON lines that it parses itself: every value must come back
    # as it went in, to the last bit of a float and the last character of a string.
    warehouse = await open_warehouse()
    text = 'quote " backslash \\ nul \x00 tab \t newline \n é 😀 \u2028'
    edges = {
        "text": text,
        "smallest": 5e-324,
        "inexact": 0.1 + 0.2,
        "huge": 1.7976931348623157e308,
        "negative_zero": -0.0,
        "int_max": 2**63 - 1,
        "int_min": -(2**63),
        "past_int64": 2**64,
        "flag": False,
        "at": "1969-07-20T20:17:40.999999-05:00",
        "list": ["a", 1, None, {"b": True}],
    }
    event = track("Edges", edges)
    await warehouse.write([event])

    [row] = await rows(warehouse, "SELECT * FROM edges")
    types = await column_types(warehouse, "edges")
    assert row["text"] == text
    assert row["smallest"] == 5e-324
    assert row["inexact"] == 0.30000000000000004
    assert row["huge"] == 1.7976931348623157e308
    assert row["negative_zero"] == 0.0
    assert (row["int_max"], row["int_min"]) == (str(2**63 - 1), str(-(2**63)))
    assert types["int_max"] == "Nullable(Int64)"
    # Past Int64 a number is a double, as JavaScript reads it.
    assert types["past_int64"] == "Nullable(Float64)"
    assert row["past_int64"] == float(2**64)
    assert row["flag"] is False
    # Timestamps keep milliseconds, in UTC; before 1970 too.
    assert types["at"] == "Nullable(DateTime64(3, 'UTC'))"
    assert row["at"] == "1969-07-21T01:17:40.999Z"
    assert json.loads(row["list"]) == ["a", 1, None, {"b": True}]
    [tracked] = await rows(warehouse, "SELECT received_at FROM tracks")
    expected = event.received_at.astimezone(UTC).isoformat(timespec="milliseconds")
    assert tracked["received_at"] == expected.replace("+00:00", "Z")
    assert await rows(warehouse, "SELECT * FROM discards") == []


async def test_columns_changed_by_hand_to_related_types_still_take_values(
    open_warehouse: OpenWarehouse, chdb_dir: Path, database: str
) -> None:
    warehouse = await open_warehouse()
    first = {"day": "2024-05-01T12:00:00Z", "plan": "pro", "amount": 1.5}
    await warehouse.write([track("Billed", first)])
    change_by_hand(
        chdb_dir,
        f"ALTER TABLE {database}.billed MODIFY COLUMN day Nullable(Date), "
        "MODIFY COLUMN plan LowCardinality(Nullable(String)), "
        "MODIFY COLUMN amount Nullable(Decimal(10, 2))",
    )
    warehouse.schema_ttl_seconds = 0

    # A date-time goes into a Date column as its UTC date (late in the day in New York is the
    # next day in UTC); text into a low-cardinality string; a number into a decimal.
    later = {"day": "2024-05-02T22:30:00-04:00", "plan": "team", "amount": 2.25}
    await warehouse.write([track("Billed", later)])

    stored = await rows(warehouse, "SELECT day, plan, amount FROM billed ORDER BY id")
    assert stored == [
        {"day": "2024-05-01", "plan": "pro", "amount": "1.50"},
        {"day": "2024-05-03", "plan": "team", "amount": "2.25"},
    ]
    assert await rows(warehouse, "SELECT * FROM discards") == []


async def test_stored_traits_of_hand_made_types_are_written_back_as_they_were(
    open_warehouse: OpenWarehouse, chdb_dir: Path, database: str
) -> None:
    # users rows are rewritten with their stored traits on every identify: values read back
    # from columns of types this plugin never makes must go back in unchanged.
    warehouse = await open_warehouse()
    now = datetime.now(UTC)
    await warehouse.write([identify("i-1", {"ip": "192.0.2.7", "code": "abc", "rank": 1}, at=now)])
    change_by_hand(
        chdb_dir,
        f"ALTER TABLE {database}.users MODIFY COLUMN ip Nullable(IPv4), "
        "MODIFY COLUMN code Nullable(FixedString(3))",
    )
    warehouse.schema_ttl_seconds = 0

    await warehouse.write([identify("i-2", {"rank": 2}, at=now)])

    assert await rows(warehouse, "SELECT ip, code, rank FROM users") == [
        {"ip": "192.0.2.7", "code": "abc", "rank": 2}
    ]


async def test_every_value_set_aside_survives_final_and_merges(
    open_warehouse: OpenWarehouse, chdb_dir: Path, database: str
) -> None:
    warehouse = await open_warehouse()
    now = datetime.now(UTC)
    # Four keys that snake-case to one column: the first is written, the other three set aside.
    await warehouse.write([track("Alike", {"x.y": 1, "x y": 2, "x-y": 3, "X_Y": 4})])
    # Two calls in one request give one user conflicting values: both are set aside.
    await warehouse.write([identify("i-1", {"age": 30}, at=now)])
    await warehouse.write(
        [identify("i-2", {"age": "thirty"}, at=now), identify("i-3", {"age": "forty"}, at=now)]
    )
    # Background merges must not fold them together either.
    change_by_hand(chdb_dir, f"OPTIMIZE TABLE {database}.discards FINAL")

    assert [r["x_y"] for r in await rows(warehouse, "SELECT x_y FROM alike")] == [1]
    alike = await rows(
        warehouse,
        "SELECT column_name, key_path, value, reason FROM discards "
        "WHERE table_name = 'alike' ORDER BY value",
    )
    assert alike == [
        {"column_name": "x_y", "key_path": ["properties", key], "value": value,
         "reason": "duplicate_column"}
        for key, value in (("x y", "2"), ("x-y", "3"), ("X_Y", "4"))
    ]  # fmt: skip
    users = await rows(
        warehouse,
        "SELECT row_id, message_id, key_path, value FROM discards "
        "WHERE table_name = 'users' ORDER BY message_id",
    )
    assert users == [
        {"row_id": "u-1", "message_id": "i-2", "key_path": ["traits", "age"], "value": "thirty"},
        {"row_id": "u-1", "message_id": "i-3", "key_path": ["traits", "age"], "value": "forty"},
    ]


async def test_the_key_path_of_a_value_set_aside_is_the_one_sent(
    open_warehouse: OpenWarehouse,
) -> None:
    warehouse = await open_warehouse()
    await warehouse.write(
        [track("Paths", {"shop": {"itemCount": 1}, "when": "2024-05-01T12:00:00Z"})]
    )
    clash = track(
        "Paths",
        # Nested, then flat: both are the column shop_item_count; the nested one came first.
        {"shop": {"itemCount": "many"}, "shop.item count": 2, "when": 7, "id": "spoofed"},
        context={"userAgent": "a", "user_agent": "b"},
    )
    await warehouse.write([clash])

    found = await rows(
        warehouse,
        "SELECT table_name, column_name, key_path, row_id, message_id, value, reason "
        "FROM discards ORDER BY table_name, column_name, reason",
    )
    paths = {(r["table_name"], r["column_name"], r["reason"]): r["key_path"] for r in found}
    assert paths == {
        ("paths", "context_user_agent", "duplicate_column"): ["context", "user_agent"],
        ("paths", "id", "reserved_column"): ["properties", "id"],
        ("paths", "shop_item_count", "duplicate_column"): ["properties", "shop.item count"],
        ("paths", "shop_item_count", "type_conflict"): ["properties", "shop", "itemCount"],
        ("paths", "when", "type_conflict"): ["properties", "when"],
        ("tracks", "context_user_agent", "duplicate_column"): ["context", "user_agent"],
    }
    assert {(r["row_id"], r["message_id"]) for r in found} == {(clash.message_id, clash.message_id)}


async def test_a_discards_table_of_the_earlier_layout_is_migrated_in_place(
    open_warehouse: OpenWarehouse, chdb_dir: Path, database: str
) -> None:
    # The layout of the release before: no key_path or message_id, values of one row and
    # column merged away.
    change_by_hand(chdb_dir, f"CREATE DATABASE {database}")
    change_by_hand(
        chdb_dir,
        f"CREATE TABLE {database}.discards (table_name String, column_name String, "
        "row_id String, value String, value_type String, column_type String, reason String, "
        "received_at DateTime64(3, 'UTC'), discarded_at DateTime64(6, 'UTC')) "
        "ENGINE = ReplacingMergeTree(discarded_at) "
        "ORDER BY (table_name, column_name, row_id, received_at)",
    )
    change_by_hand(
        chdb_dir,
        f"INSERT INTO {database}.discards VALUES ('old', 'x', 'm-old', '1', 'integer', "
        "'Nullable(String)', 'type_conflict', now64(3), now64(6))",
    )
    warehouse = await open_warehouse()
    await warehouse.write([track("Alike", {"x.y": 1, "x y": 2, "x-y": 3})])

    found = await rows(
        warehouse, "SELECT table_name, key_path, message_id, value FROM discards ORDER BY value"
    )
    assert [(r["table_name"], r["value"]) for r in found] == [
        ("old", "1"), ("alike", "2"), ("alike", "3")
    ]  # fmt: skip
    assert found[0]["key_path"] == [] and found[0]["message_id"] == ""
    [created] = await rows(warehouse, "SHOW CREATE TABLE discards")
    assert "message_id, key_path)" in next(iter(created.values()))
