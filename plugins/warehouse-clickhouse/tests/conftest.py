"""Fixtures for the ClickHouse warehouse tests: the real engine, through chDB.

chDB opens one data directory per process, so every test in this process shares one, each in a
database of its own (dropped afterwards). A client held for the whole session keeps the engine
loaded between tests, which saves about a second each.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from signalsmith_warehouse_clickhouse import ClickHouseWarehouse, WarehouseConfig
from signalsmith_warehouse_clickhouse.naming import quote


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import clickhouse_connect

    path = tmp_path_factory.mktemp("chdb")
    keeper = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    try:
        yield path
    finally:
        keeper.close()


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def open_warehouse(
    chdb_dir: Path, database: str
) -> AsyncIterator[Callable[..., Awaitable[ClickHouseWarehouse]]]:
    """Open warehouses on the session's chDB directory, in this test's database."""
    import clickhouse_connect

    opened: list[ClickHouseWarehouse] = []

    async def open_(**options: Any) -> ClickHouseWarehouse:
        config = WarehouseConfig(dsn=f"chdb://{chdb_dir}", database=database, **options)
        warehouse = ClickHouseWarehouse(config, config.target(chdb_dir))
        await warehouse.open()
        opened.append(warehouse)
        return warehouse

    yield open_
    for warehouse in opened:
        await warehouse.close()
    cleaner = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    try:
        cleaner.command(f"DROP DATABASE IF EXISTS {quote(database)}")
    finally:
        cleaner.close()
