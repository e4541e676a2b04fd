"""The plugin in SignalSmith: its hooks, the collector -> Redis -> worker -> warehouse path in one
process, the admin SQL endpoint, and `signalsmith sql` on its own."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from signalsmith import Settings, Source, Track
from signalsmith.testing import (
    StaticKeys,
    collector_client,
    identify,
    plugin_infos,
    plugin_manager,
    registered_sinks,
    track,
)
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse
from signalsmith_warehouse_clickhouse.plugin import held_warehouse

PLUGIN = "warehouse-clickhouse"
WRITE_KEY = "wk-warehouse-test"
ADMIN_TOKEN = "ssadm_warehouse-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_SECONDS = 30.0


def test_plugin_is_registered_through_its_entry_point() -> None:
    [info] = plugin_infos(plugin_manager(entry_points=[PLUGIN]))
    assert info.name == PLUGIN
    assert info.hooks == [
        "embedded_defaults",
        "register_admin_routes",
        "register_commands",
        "register_warehouses",
        "shutdown",
        "startup",
        "write_events",
    ]


def test_the_sink_batches_by_size_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SIGNALSMITH_WAREHOUSE_"):
            monkeypatch.delenv(name)
    [sink] = registered_sinks(plugin_manager(entry_points=[PLUGIN]))
    assert (sink.name, sink.kind, sink.plugin) == ("clickhouse", "warehouse", PLUGIN)
    assert (sink.batch_size, sink.max_wait_seconds) == (10_000, 1.0)

    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_BATCH_SIZE", "500")
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_MAX_WAIT_SECONDS", "0.2")
    [sink] = registered_sinks(plugin_manager(entry_points=[PLUGIN]))
    assert (sink.batch_size, sink.max_wait_seconds) == (500, 0.2)


@pytest.fixture
def warehouse_env(monkeypatch: pytest.MonkeyPatch, chdb_dir: Path, database: str) -> None:
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_DSN", f"chdb://{chdb_dir}")
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_DATABASE", database)
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_MAX_WAIT_SECONDS", "0.05")


def client_for(settings: Settings, *, embedded: bool, **more_keys: Source) -> Any:
    """A collector (with the worker in it when ``embedded``) knowing WRITE_KEY (and
    ``more_keys``), with its client."""
    keys = {WRITE_KEY: Source(id="web", name="Website"), **more_keys}
    return collector_client(
        msgspec.structs.replace(settings, admin_token=ADMIN_TOKEN, embedded_worker=embedded),
        (StaticKeys(keys), "keys"),
        entry_points=[PLUGIN],
    )


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


async def sql(client: AsyncTestClient[Any], query: str) -> list[dict[str, Any]]:
    response = await client.post("/api/v1/admin/sql", json={"sql": query}, headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


async def rows_eventually(
    client: AsyncTestClient[Any], query: str, count: int, *, table: str = "tracks"
) -> list[dict[str, Any]]:
    """Poll until ``query`` returns ``count`` rows; a batch's tables are written one by one."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        tables = {row["name"] for row in await sql(client, "SHOW TABLES")}
        if table in tables:
            rows = await sql(client, query)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
        elif time.monotonic() > deadline:
            pytest.fail(f"no tables after {DEADLINE_SECONDS}s: {tables}")
        await asyncio.sleep(0.05)


@pytest.mark.usefixtures("warehouse_env")
async def test_events_flow_from_the_collector_to_the_warehouse_in_one_process(
    settings: Settings,
) -> None:
    """The embedded role: the process that runs the worker holds the warehouse and answers
    the admin SQL endpoint; a redelivered messageId is one row."""
    first = track("Order Completed", properties={"revenue": 12.5, "items": [{"sku": "a"}]})
    batch = {"batch": [first, identify(traits={"email": "ada@example.com"})]}
    async with client_for(settings, embedded=True) as client:
        assert held_warehouse(client.app.state.runtime) is not None
        response = await client.post("/v1/batch", json=batch, headers=basic())
        assert response.status_code == 200, response.text
        # The client retries the same batch (a lost response): dedupe keeps one copy.
        await client.post("/v1/batch", json=batch, headers=basic())

        rows = await rows_eventually(client, "SELECT id, event_text FROM tracks", 1)
        assert rows == [{"id": first["messageId"], "event_text": "Order Completed"}]
        [row] = await rows_eventually(
            client, "SELECT revenue, items FROM order_completed", 1, table="order_completed"
        )
        assert row == {"revenue": 12.5, "items": '[{"sku":"a"}]'}
        users = await rows_eventually(client, "SELECT id, email FROM users", 1, table="users")
        assert users == [{"id": "user-1", "email": "ada@example.com"}]

        refused = await client.post(
            "/api/v1/admin/sql", json={"sql": "DROP TABLE tracks"}, headers=ADMIN
        )
        assert refused.status_code == 400
        assert "read-only" in refused.json()["message"]
        unknown = await client.post(
            "/api/v1/admin/sql", json={"sql": "SELECT nope FROM tracks"}, headers=ADMIN
        )
        assert unknown.status_code == 400
        assert "nope" in unknown.json()["message"]
        anonymous = await client.post("/api/v1/admin/sql", json={"sql": "SELECT 1"})
        assert anonymous.status_code == 401
    assert held_warehouse(client.app.state.runtime) is None


FLOOD_KEY = "wk-warehouse-flood"


@pytest.mark.usefixtures("warehouse_env")
async def test_another_sources_event_lands_while_a_flood_of_new_names_is_held_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,500 new event names from one key: each would be a table of its own, at tens of
    milliseconds each. Another source's event lands long before they could all be made."""
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_MAX_EVENT_TABLES_PER_SOURCE", "300")
    flood_source = {FLOOD_KEY: Source(id="free", name="A free key")}
    flood_auth = {"Authorization": "Basic " + base64.b64encode(f"{FLOOD_KEY}:".encode()).decode()}
    async with client_for(settings, embedded=True, **flood_source) as client:
        for first in range(0, 2500, 500):
            flood = [
                track(f"Flood {index}", properties={"index": index})
                for index in range(first, first + 500)
            ]
            response = await client.post("/v1/batch", json={"batch": flood}, headers=flood_auth)
            assert response.status_code == 200, response.text
        mine = track("Order Completed", properties={"revenue": 12.5})
        response = await client.post("/v1/batch", json={"batch": [mine]}, headers=basic())
        assert response.status_code == 200, response.text

        deadline = time.monotonic() + 120
        landed: list[dict[str, Any]] = []
        while not landed:
            assert time.monotonic() < deadline, "the web source's event never landed"
            await asyncio.sleep(0.2)
            names = {row["name"] for row in await sql(client, "SHOW TABLES")}
            if "order_completed" in names:
                landed = await sql(client, "SELECT id, source_id FROM order_completed")
        flood_tables_then = len([name for name in names if name.startswith("flood_")])
        assert landed == [{"id": mine["messageId"], "source_id": "web"}]
        # It did not wait for the flood's tables: at most the cap of them were ever made.
        assert flood_tables_then <= 300

        # Every flood call is in tracks; those of names that got no table have their
        # properties in discards (written last in a batch: polled for).
        [calls] = await sql(client, "SELECT count() AS n FROM tracks WHERE source_id = 'free'")
        assert calls == {"n": 2500}
        tables = [row["name"] for row in await sql(client, "SHOW TABLES")]
        flood_tables = len([name for name in tables if name.startswith("flood_")])
        assert flood_tables == flood_tables_then
        kept = -1
        while kept != 2500 - flood_tables and time.monotonic() < deadline:
            [row] = await sql(
                client,
                "SELECT count() AS n FROM discards WHERE column_name = 'properties' "
                "AND reason IN ('event_table_limit', 'new_table_limit')",
            )
            kept = row["n"]
        assert kept == 2500 - flood_tables


@pytest.mark.usefixtures("warehouse_env")
async def test_a_collector_never_opens_the_embedded_warehouse(settings: Settings) -> None:
    async with client_for(settings, embedded=False) as client:
        assert held_warehouse(client.app.state.runtime) is None
        response = await client.post("/api/v1/admin/sql", json={"sql": "SELECT 1"}, headers=ADMIN)
    assert response.status_code == 409
    assert "does not hold the warehouse" in response.json()["message"]


async def test_raw_rows_keep_redeliveries_and_final_merges_them(
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]], chdb_dir: Path, database: str
) -> None:
    """What the README tells users: without FINAL a redelivered event can show twice until
    ClickHouse merges; with FINAL (what `signalsmith sql` adds) it never does."""
    import clickhouse_connect

    warehouse = await open_warehouse()
    now = datetime.now(UTC)
    events = [
        Track(message_id=f"m-{index}", received_at=now, timestamp=now, event="Viewed")
        for index in range(3)
    ]
    await warehouse.write(events)
    raw = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    try:
        # Hold background merges, which would otherwise remove duplicates at a time of their own.
        raw.command(f"SYSTEM STOP MERGES {database}.tracks")
        # The same batch again (a retry): its insert token matches, nothing is added.
        await warehouse.write(events)
        assert raw.query(f"SELECT count() FROM {database}.tracks").result_rows == [(3,)]
        # A reclaimed entry regrouped with others: another batch, so another token.
        await warehouse.write(events[1:])
        assert raw.query(f"SELECT count() FROM {database}.tracks").result_rows == [(5,)]
        assert raw.query(f"SELECT count() FROM {database}.tracks FINAL").result_rows == [(3,)]
        assert (await warehouse.query("SELECT count() FROM tracks")).rows == [[3]]
    finally:
        raw.command(f"SYSTEM START MERGES {database}.tracks")
        raw.close()


def run_cli(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalsmith", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}
    env.update(extra)
    return env


WRITE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from signalsmith.model import Track
    from signalsmith_warehouse_clickhouse import ClickHouseWarehouse, WarehouseConfig

    async def main():
        config = WarehouseConfig.from_env()
        warehouse = ClickHouseWarehouse(config, config.target(Path(sys.argv[1])))
        now = datetime.now(UTC)
        await warehouse.write([
            Track(message_id=f"m-{i}", received_at=now, timestamp=now, event="Song Played",
                  properties={"title": f"Song {i}", "seconds": 180 + i})
            for i in range(3)
        ])
        await warehouse.close()

    asyncio.run(main())
    """
)


def test_sql_command_reads_an_embedded_warehouse_no_server_holds(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(SIGNALSMITH_DATA_DIR=str(data_dir))

    missing = run_cli(["sql", "SELECT 1"], cwd=tmp_path, env=env)
    assert missing.returncode == 1
    assert "no warehouse at" in missing.stderr and "signalsmith serve" in missing.stderr
    assert not (data_dir / "warehouse").exists()

    written = subprocess.run(
        [sys.executable, "-c", WRITE_SCRIPT, str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert written.returncode == 0, written.stderr

    table = run_cli(
        ["sql", "SELECT id, title, seconds FROM song_played ORDER BY id"], cwd=tmp_path, env=env
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "title", "seconds"]
    assert lines[1].split() == ["m-0", "Song", "0", "180"]
    assert lines[-1] == "(3 rows)"

    as_json = run_cli(
        ["sql", "SELECT id, seconds FROM song_played ORDER BY id", "--format", "json"],
        cwd=tmp_path,
        env=env,
    )
    assert json.loads(as_json.stdout) == [{"id": f"m-{i}", "seconds": 180 + i} for i in range(3)]

    as_csv = run_cli(
        ["sql", "SELECT id FROM song_played ORDER BY id", "--format", "csv", "--limit", "2"],
        cwd=tmp_path,
        env=env,
    )
    assert as_csv.stdout.splitlines() == ["id", "m-0", "m-1"]
    assert "raise --limit" in as_csv.stderr

    refused = run_cli(["sql", "DELETE FROM tracks WHERE 1"], cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert "read-only" in refused.stderr


def test_sql_command_explains_a_warehouse_held_by_another_process(
    tmp_path: Path, chdb_dir: Path
) -> None:
    """This test process holds `chdb_dir` open, as a running worker would."""
    env = clean_env(
        SIGNALSMITH_WAREHOUSE_DSN=f"chdb://{chdb_dir}", SIGNALSMITH_DATA_DIR=str(tmp_path)
    )
    result = run_cli(["sql", "SELECT 1"], cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "open in another process" in result.stderr, result.stderr
