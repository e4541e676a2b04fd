"""The caps on event tables (per source, and new ones per batch), against the real engine."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from signalsmith.model import Track
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse

OpenWarehouse = Callable[..., Awaitable[ClickHouseWarehouse]]
_counter = iter(range(1_000_000))
# Every table that is not an event's own.
NOT_EVENT_TABLES = {"tracks", "identifies", "users", "discards", "_event_tables"}


def track(event: str, source: str, properties: dict[str, Any] | None = None) -> Track:
    now = datetime.now(UTC)
    return Track(
        message_id=f"m-{next(_counter):07d}",
        received_at=now,
        timestamp=now,
        event=event,
        properties=properties or {},
        project_id=source,
    )


async def rows(warehouse: ClickHouseWarehouse, sql: str) -> list[dict[str, Any]]:
    result = await warehouse.query(sql)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


async def event_tables(warehouse: ClickHouseWarehouse) -> set[str]:
    # SHOW TABLES: `signalsmith sql` reads the warehouse's own tables only, not system.tables.
    found = await rows(warehouse, "SHOW TABLES")
    return {row["name"] for row in found} - NOT_EVENT_TABLES


async def untabled(warehouse: ClickHouseWarehouse) -> dict[str, tuple[str, str]]:
    """The tracks with no table of their own: event name -> (reason, properties as kept)."""
    found = await rows(
        warehouse,
        "SELECT t.event_text AS name, d.reason AS reason, d.value AS value "
        "FROM tracks AS t JOIN discards AS d ON d.row_id = t.id "
        "WHERE t.event = '' AND d.column_name = 'properties'",
    )
    return {row["name"]: (row["reason"], row["value"]) for row in found}


async def test_a_source_gets_no_more_event_tables_than_its_cap(
    open_warehouse: OpenWarehouse, caplog: pytest.LogCaptureFixture
) -> None:
    warehouse = await open_warehouse(max_event_tables_per_source=3)
    flood = [track(f"Flood {index}", "free", {"index": index}) for index in range(5)]
    with caplog.at_level(logging.WARNING, logger="signalsmith.warehouse_clickhouse"):
        await warehouse.write([*flood, track("Order Completed", "web", {"total": 5})])

    assert await event_tables(warehouse) == {"flood_0", "flood_1", "flood_2", "order_completed"}
    # Every call is in tracks; the two past the cap have no table, their properties kept whole.
    assert len(await rows(warehouse, "SELECT id FROM tracks")) == 6
    assert await untabled(warehouse) == {
        "Flood 3": ("event_table_limit", '{"index":3}'),
        "Flood 4": ("event_table_limit", '{"index":4}'),
    }
    [warning] = [record.getMessage() for record in caplog.records]
    assert "'free'" in warning and "SIGNALSMITH_WAREHOUSE_MAX_EVENT_TABLES_PER_SOURCE" in warning

    # The cap outlives the process. A name that has a table takes any source's calls.
    again = await open_warehouse(max_event_tables_per_source=3)
    await again.write(
        [
            track("Flood 5", "free"),
            track("Flood 1", "free", {"index": 1}),
            track("Flood 0", "web", {"index": 0}),
            track("Checkout Started", "web"),
        ]
    )
    assert await event_tables(again) == {
        "flood_0", "flood_1", "flood_2", "order_completed", "checkout_started"
    }  # fmt: skip
    assert (await untabled(again))["Flood 5"] == ("event_table_limit", "{}")
    assert await rows(again, "SELECT source_id, index FROM flood_0 ORDER BY source_id") == [
        {"source_id": "free", "index": 0},
        {"source_id": "web", "index": 0},
    ]
    counted = await rows(
        again,
        "SELECT source_id, count() AS tables FROM _event_tables GROUP BY source_id "
        "ORDER BY source_id",
    )
    assert counted == [{"source_id": "free", "tables": 3}, {"source_id": "web", "tables": 2}]


async def test_a_batch_makes_at_most_its_cap_of_new_tables_shared_among_sources(
    open_warehouse: OpenWarehouse,
) -> None:
    warehouse = await open_warehouse(max_new_event_tables_per_batch=4)
    names = [f"Flood {index}" for index in range(20)]
    # The flood comes first in the batch; the other source's new name still gets a table.
    await warehouse.write([*(track(name, "free") for name in names), track("Signed Up", "web")])

    tables = await event_tables(warehouse)
    assert "signed_up" in tables and len(tables) == 4
    left = await untabled(warehouse)
    assert len(left) == 17 and {reason for reason, _ in left.values()} == {"new_table_limit"}

    # Later calls of those names get their tables, a batch's share at a time.
    await warehouse.write([track(name, "free") for name in names])
    assert len(await event_tables(warehouse)) == 8


async def test_every_call_of_a_flood_is_in_tracks_and_its_properties_in_discards(
    open_warehouse: OpenWarehouse,
) -> None:
    warehouse = await open_warehouse(
        max_event_tables_per_source=10, max_new_event_tables_per_batch=5
    )
    flood = [
        track(f"Flood {index}", "free", {"index": index, "nested": {"a b": [1, None]}})
        for index in range(2500)
    ]
    await warehouse.write(flood)

    assert len(await event_tables(warehouse)) == 5
    [count] = await rows(
        warehouse, "SELECT count() AS calls, uniq(event_text) AS names FROM tracks"
    )
    assert count == {"calls": 2500, "names": 2500}
    left = await untabled(warehouse)
    assert len(left) == 2495
    assert json.loads(left["Flood 2499"][1]) == {"index": 2499, "nested": {"a b": [1, None]}}
