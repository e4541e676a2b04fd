"""The core's warehouse conformance suite, against the real ClickHouse engine (chDB)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from signalsmith import Event
from signalsmith.testing.warehouse import WarehouseConformance
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse
from signalsmith_warehouse_clickhouse.naming import quote
from signalsmith_warehouse_clickhouse.values import kind_of_type
from signalsmith_warehouse_clickhouse.warehouse import literal

# Small enough that the suite's column-cap test stays quick, large enough for every other test.
MAX_COLUMNS = 60


class ChdbUnderTest:
    """The suite's view of one ClickHouseWarehouse: writes through it, reads with its query
    helper (the one `signalsmith sql` uses, so deduplication is what users get)."""

    def __init__(self, warehouse: ClickHouseWarehouse) -> None:
        self.warehouse = warehouse
        self.max_columns: int | None = warehouse.config.max_columns

    async def write(self, events: list[Event]) -> None:
        await self.warehouse.write(events)

    async def query(self, sql: str) -> list[dict[str, Any]]:
        result = await self.warehouse.query(sql)
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]

    async def columns(self, table: str) -> dict[str, str]:
        # DESCRIBE: `signalsmith sql` reads the warehouse's own tables only, not system.columns.
        rows = await self.query(f"DESCRIBE {quote(table)}")
        return {row["name"]: kind_of_type(row["type"]).value for row in rows}

    async def tables(self) -> set[str]:
        return {row["name"] for row in await self.query("SHOW TABLES")}

    async def event_table(self, event_text: str) -> str:
        [row] = await self.query(
            f"SELECT table_name FROM _event_tables WHERE event_text = {literal(event_text)}"
        )
        return row["table_name"]

    def quote(self, identifier: str) -> str:
        return quote(identifier)


class TestClickHouseConformance(WarehouseConformance):
    @pytest.fixture
    async def warehouse_under_test(
        self, open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]]
    ) -> AsyncIterator[ChdbUnderTest]:
        yield ChdbUnderTest(await open_warehouse(max_columns=MAX_COLUMNS))
