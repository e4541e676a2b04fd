"""Read-only queries have limits: the engine stops one past its time or memory, a slow one does
not hold up the next, and one nobody waits for any more is stopped in the engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from granian.constants import Interfaces
from granian.server.embed import Server

from signalsmith import Settings
from signalsmith.testing import collector_app, free_port
from signalsmith_warehouse_clickhouse import (
    ClickHouseWarehouse,
    NotReadOnly,
    QueryError,
    WarehouseConfig,
)

DEADLINE_SECONDS = 30.0
# Runs for hours without using the CPU: it sleeps 10 µs a row, about 0.65 s per block, so the
# engine looks at its limits and at KILL QUERY between blocks.
SLOW = "SELECT sum(sleepEachRow(0.00001)) FROM numbers(1000000000)"
ADMIN_TOKEN = "ssadm_query-limits-test-token"

OpenWarehouse = Callable[..., Awaitable[ClickHouseWarehouse]]


@pytest.fixture
def engine(chdb_dir: Path) -> Iterator[Any]:
    """A client of the test's own on the engine, to watch system.processes."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    yield client
    client.close()


def running_slow_queries(engine: Any) -> int:
    """How many queries of the warehouse's read sessions (their log_comment mark) are running
    the slow statement."""
    return int(
        engine.query(
            "SELECT count() FROM system.processes "
            "WHERE Settings['log_comment'] LIKE 'signalsmith-sql %' AND query LIKE '%sleepEachRow%'"
        ).result_rows[0][0]
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS}s: {what}")
        await asyncio.sleep(0.05)


async def test_a_query_past_its_time_limit_is_stopped_by_the_engine(
    open_warehouse: OpenWarehouse, engine: Any
) -> None:
    warehouse = await open_warehouse(query_timeout_seconds=1.0)
    with pytest.raises(QueryError, match="ran longer than 1 s") as refused:
        await warehouse.query(SLOW)
    assert "SIGNALSMITH_WAREHOUSE_QUERY_TIMEOUT_SECONDS" in str(refused.value)
    assert running_slow_queries(engine) == 0
    # The next query gets an answer as usual.
    assert (await warehouse.query("SELECT 1 AS one")).rows == [[1]]


async def test_a_query_past_its_memory_limit_is_stopped_by_the_engine(
    open_warehouse: OpenWarehouse,
) -> None:
    warehouse = await open_warehouse(query_max_memory_bytes=50_000_000)
    with pytest.raises(QueryError, match="needed more than 50000000 bytes") as refused:
        await warehouse.query("SELECT groupArray(number) FROM numbers(100000000)")
    assert "SIGNALSMITH_WAREHOUSE_QUERY_MAX_MEMORY_BYTES" in str(refused.value)


async def test_the_limits_hold_and_a_query_cannot_loosen_them(
    open_warehouse: OpenWarehouse,
) -> None:
    warehouse = await open_warehouse(query_timeout_seconds=7.5, query_max_memory_bytes=123456789)
    result = await warehouse.query(
        "SELECT getSetting('max_execution_time'), getSetting('max_memory_usage'), "
        "getSetting('readonly'), getSetting('final')"
    )
    assert result.rows == [[7.5, 123456789, 1, True]]
    for clause in ("max_execution_time = 0", "max_memory_usage = 0", "readonly = 0"):
        with pytest.raises(NotReadOnly, match="leave out the SETTINGS clause"):
            await warehouse.query(f"SELECT 1 SETTINGS {clause}")


async def test_a_second_query_is_answered_while_a_slow_one_runs_and_cancelling_stops_it(
    open_warehouse: OpenWarehouse, engine: Any
) -> None:
    warehouse = await open_warehouse(query_timeout_seconds=600.0)
    slow = asyncio.create_task(warehouse.query(SLOW))
    await until(lambda: running_slow_queries(engine) == 1, "the slow query runs")

    fast = await asyncio.wait_for(warehouse.query("SELECT 1 AS one"), DEADLINE_SECONDS)
    assert fast.rows == [[1]]
    assert not slow.done()
    assert running_slow_queries(engine) == 1

    # Whoever awaited it gave up (as the admin route does when its client goes away).
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    await until(lambda: running_slow_queries(engine) == 0, "the engine stops the slow query")
    assert (await warehouse.query("SELECT 2 AS two")).rows == [[2]]


async def test_closing_the_warehouse_stops_its_queries(
    chdb_dir: Path, database: str, engine: Any
) -> None:
    """A server that stops does not wait for a slow query to finish."""
    config = WarehouseConfig(
        dsn=f"chdb://{chdb_dir}", database=database, query_timeout_seconds=600.0
    )
    warehouse = ClickHouseWarehouse(config, config.target(chdb_dir))
    try:
        await warehouse.open()
        slow = asyncio.create_task(warehouse.query(SLOW))
        await until(lambda: running_slow_queries(engine) == 1, "the slow query runs")
        await warehouse.close()
        with pytest.raises(QueryError, match="cancelled"):
            await asyncio.wait_for(slow, DEADLINE_SECONDS)
        assert running_slow_queries(engine) == 0
    finally:
        engine.command(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
async def served_warehouse(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, chdb_dir: Path, database: str
) -> AsyncIterator[int]:
    """The app of an embedded `signalsmith serve` behind a real Granian server in this process
    (so the test can watch the engine it uses); its port."""
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_DSN", f"chdb://{chdb_dir}")
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_DATABASE", database)
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_QUERY_TIMEOUT_SECONDS", "600")
    app = collector_app(
        msgspec.structs.replace(settings, admin_token=ADMIN_TOKEN, embedded_worker=True),
        entry_points=["warehouse-clickhouse"],
    )
    port = free_port()
    server = Server(
        app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_enabled=False
    )
    serving = asyncio.create_task(server.serve())

    async def answers() -> bool:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        return False

    deadline = time.monotonic() + DEADLINE_SECONDS
    while not await answers():
        assert time.monotonic() < deadline, "Granian did not start"
        await asyncio.sleep(0.05)
    try:
        yield port
    finally:
        server.stop()
        await asyncio.wait_for(serving, DEADLINE_SECONDS)


async def test_a_query_whose_http_client_went_away_is_stopped_in_the_engine(
    served_warehouse: int, engine: Any
) -> None:
    body = json.dumps({"sql": SLOW}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", served_warehouse)
    writer.write(
        b"POST /api/v1/admin/sql HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await until(lambda: running_slow_queries(engine) == 1, "the slow query runs")

    writer.close()
    await writer.wait_closed()
    await until(lambda: running_slow_queries(engine) == 0, "the engine stops the slow query")
