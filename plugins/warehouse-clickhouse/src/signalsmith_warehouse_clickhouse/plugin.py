"""The hook implementations of the warehouse-clickhouse plugin; this module is the registered plugin.

Importing it is cheap (no clickhouse-connect, no chDB): every SignalSmith process loads it, and
only the one that runs the sink opens the warehouse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from signalsmith import BannerValue, CliCommand, Event, Sink, SinkError, hookimpl
from signalsmith_warehouse_clickhouse.config import WarehouseConfig
from signalsmith_warehouse_clickhouse.violations import ViolationsLoader

# clickhouse-connect itself is imported only when a warehouse is opened.
from signalsmith_warehouse_clickhouse.warehouse import ClickHouseWarehouse, WarehouseUnavailable

if TYPE_CHECKING:
    import click

    from signalsmith import Runtime

STATE_KEY = "warehouse-clickhouse"
LOADER_KEY = "warehouse-clickhouse.violations"

log = logging.getLogger("signalsmith.warehouse_clickhouse")


def held_warehouse(runtime: Runtime) -> ClickHouseWarehouse | None:
    """The warehouse this process holds (``startup`` opened it), if it holds one."""
    warehouse = runtime.state.get(STATE_KEY)
    return warehouse if isinstance(warehouse, ClickHouseWarehouse) else None


@hookimpl
def register_warehouses(register: Callable[[Sink], None]) -> None:
    config = WarehouseConfig.from_env()
    register(
        Sink(
            name=config.sink_name,
            batch_size=config.batch_size,
            max_wait_seconds=config.max_wait_seconds,
            max_attempts=config.max_attempts,
        )
    )


@hookimpl
async def startup(runtime: Runtime) -> None:
    config = WarehouseConfig.from_env()
    target = config.target(runtime.settings.data_path)
    if target.kind == "chdb" and not runtime.delivers:
        # chDB locks its directory to one process: the one that runs the sinks (the embedded
        # serve's single process, or `signalsmith worker`). Collectors and CLI commands never
        # open it; `signalsmith sql` asks the holder through the admin API.
        return
    if runtime.role == "cli":
        return
    warehouse = ClickHouseWarehouse(config, target)
    if target.kind == "chdb":
        # Opened now so a second process on the same directory fails at start, naming the fix,
        # and the first batch does not wait for the engine to load. A server (http) is
        # connected on first use instead: it may come up after this process.
        await warehouse.open()
    runtime.state[STATE_KEY] = warehouse
    if runtime.delivers:
        # Events a contract blocked exist only in the violations stream: load them (and every
        # violation) into the `violations` table where the warehouse is written.
        loader = ViolationsLoader(runtime, warehouse, config.sink_name)
        loader.start()
        runtime.state[LOADER_KEY] = loader


@hookimpl
def embedded_defaults(runtime: Runtime) -> dict[str, BannerValue]:
    """Where `signalsmith serve` stores events, and the command that reads them back."""
    target = WarehouseConfig.from_env().target(runtime.settings.data_path)
    return {
        "warehouse": target.display,
        "read_it_back": CliCommand(("sql", "SELECT event_text, count() FROM tracks GROUP BY 1")),
    }


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    loader = runtime.state.pop(LOADER_KEY, None)
    if isinstance(loader, ViolationsLoader):
        await loader.stop()
    warehouse = runtime.state.pop(STATE_KEY, None)
    if warehouse is None:
        return
    await warehouse.close()


@hookimpl
async def write_events(warehouse: Sink, events: list[Event], runtime: Runtime) -> None:
    holder = held_warehouse(runtime)
    if holder is None:
        raise SinkError(
            f"{warehouse.name}: the warehouse is not open in this process; its startup hook "
            "opens it where runtime.delivers is true (`signalsmith worker`, embedded serve)"
        )
    try:
        report = await holder.write(events)
    except WarehouseUnavailable as error:
        raise SinkError(f"{warehouse.name}: {error}", retry_after=5.0) from error
    except Exception as error:
        raise SinkError(
            f"{warehouse.name}: writing {len(events)} events to {holder.target.display} failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    log.debug(
        "%s: wrote %d events: %s; %d values to discards",
        warehouse.name,
        len(events),
        ", ".join(f"{table} {count}" for table, count in report.rows.items()),
        report.discards,
    )


@hookimpl
def register_admin_routes(register: Callable[[Any], None]) -> None:
    # Imported here: only the HTTP app needs Litestar's handler machinery.
    from signalsmith_warehouse_clickhouse.admin_routes import sql_route

    register(sql_route(held_warehouse))


@hookimpl
def register_commands(cli: click.Group) -> None:
    from signalsmith_warehouse_clickhouse.cli import sql

    cli.add_command(sql)
