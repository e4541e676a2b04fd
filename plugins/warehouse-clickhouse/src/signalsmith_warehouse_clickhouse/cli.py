"""``signalsmith sql``: read the warehouse from the command line.

Where the query runs depends on who holds the warehouse: the running embedded server (through
its admin API, since chDB lets one process open the directory), a ClickHouse server (directly),
or, with neither, the chDB directory opened by this command itself.
"""

from __future__ import annotations

import csv
import logging
import sys
from typing import Any

import click
import httpx
import msgspec

from signalsmith import AdminClient, Settings, print_table, settings_of
from signalsmith_warehouse_clickhouse.config import WarehouseConfig, WarehouseConfigError
from signalsmith_warehouse_clickhouse.readonly import NotReadOnly
from signalsmith_warehouse_clickhouse.warehouse import (
    QUERY_ROW_LIMIT,
    ClickHouseWarehouse,
    QueryError,
    QueryResult,
    WarehouseUnavailable,
)


def run_query(settings: Settings, config: WarehouseConfig, query: str, limit: int) -> QueryResult:
    """The query's result from whoever holds the warehouse; ClickException says what failed.

    Whoever runs it checks it first (readonly.py): the check needs the engine's own parser.
    """
    admin = AdminClient.for_local_server(settings)
    if admin is not None:
        return _through_server(admin, query, limit)
    warehouse = ClickHouseWarehouse(config, config.target(settings.data_path))
    try:
        return warehouse.query_sync(query, limit=limit)
    except (NotReadOnly, QueryError, WarehouseUnavailable) as error:
        raise click.ClickException(str(error)) from error
    finally:
        warehouse.close_sync()


def _through_server(admin: AdminClient, query: str, limit: int) -> QueryResult:
    try:
        response = admin.request("POST", "/sql", json={"sql": query, "limit": limit})
    except httpx.HTTPError as error:
        raise click.ClickException(
            f"the running server at {admin.base_url} did not answer: {error}"
        ) from error
    finally:
        admin.close()
    if response.status_code == 200:
        return msgspec.json.decode(response.content, type=QueryResult)
    try:
        message = response.json().get("message") or response.text
    except ValueError:
        message = response.text
    if response.status_code == 401:
        message = (
            f"the server at {admin.base_url} refused the admin token ({message}); set "
            "SIGNALSMITH_ADMIN_TOKEN to the token it printed at start (kept in "
            "<data dir>/admin-token)"
        )
    elif response.status_code == 404:
        message = (
            f"the server at {admin.base_url} has no warehouse plugin loaded: restart it with "
            "signalsmith-warehouse-clickhouse installed and not blocked "
            "(SIGNALSMITH_LOAD_PLUGINS / SIGNALSMITH_BLOCK_PLUGINS)"
        )
    raise click.ClickException(message)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def _unique(columns: list[str]) -> list[str]:
    """Column headings, with repeats numbered (``SELECT 1, 1`` has two columns named ``1``)."""
    seen: dict[str, int] = {}
    out = []
    for name in columns:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def print_result(result: QueryResult, output: str) -> None:
    columns = _unique(result.columns)
    if output == "json":
        records = [dict(zip(columns, row, strict=True)) for row in result.rows]
        click.echo(msgspec.json.format(msgspec.json.encode(records), indent=2).decode())
    elif output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in result.rows:
            writer.writerow(["" if value is None else _cell(value) for value in row])
    else:
        print_table(
            [dict(zip(columns, map(_cell, row), strict=True)) for row in result.rows], columns
        )
        count = len(result.rows)
        click.echo(f"({count} row{'' if count == 1 else 's'})")
    if result.truncated:
        click.echo(
            f"more rows matched than the {len(result.rows)} shown: raise --limit "
            f"(at most {QUERY_ROW_LIMIT}) or narrow the query",
            err=True,
        )


@click.command("sql")
@click.argument("query")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="How to print the result.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, QUERY_ROW_LIMIT),
    default=1000,
    show_default=True,
    help="Most rows to print.",
)
@click.pass_context
def sql(ctx: click.Context, query: str, output: str, limit: int) -> None:
    """Run a read-only SQL QUERY against the warehouse and print the result.

    Every table is read deduplicated (ClickHouse FINAL), so an event delivered twice shows
    once. With `signalsmith serve` running here, the query goes through its admin API (the
    server holds the embedded warehouse); otherwise it opens the warehouse itself.

    \b
    signalsmith sql "SELECT event_text, count() FROM tracks GROUP BY event_text"
    signalsmith sql "SELECT * FROM users" --format json
    """
    try:
        config = WarehouseConfig.from_env()
    except WarehouseConfigError as error:
        raise click.ClickException(str(error)) from error
    # The admin client's requests would be logged line by line above the result.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    print_result(run_query(settings_of(ctx), config, query, limit), output)
