"""One source flooding the warehouse with new event names: what another source's event waits.

    .venv/bin/python bench/warehouse_flood.py [--names 2500] [--rate 100] [--seconds 30]

Each new event name is a new table, and creating one costs the engine tens of milliseconds. Two
scenarios, each in a fresh chDB directory and a process of its own (so peak memory is its own),
after a first batch from source ``web`` has created that source's tables:

- burst: one batch holding one request of ``--names`` track events with as many new names
  (source ``flood``) and one ``Order Completed`` from ``web``: the time that batch takes is what
  the ``web`` event waits (the worker writes a batch whole before the next).
- sustained: ``--rate`` new names a second from ``flood`` for ``--seconds`` seconds, each
  second's batch also holding one ``web`` event; batches arrive once a second and are written
  one after the other, as the worker would. A ``web`` event's lag is from its arrival to the end
  of its batch's write; a lag that grows second after second is a warehouse that never catches
  up.

Prints each scenario's figures, the event tables made, and the process's peak RSS. Settings of
the plugin can be given as ``--set NAME=VALUE`` (``WarehouseConfig`` fields, e.g.
``--set max_event_tables_per_source=1000000``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from signalsmith.model import Track
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse, WarehouseConfig


def track(name: str, source: str, properties: dict[str, Any]) -> Track:
    now = datetime.now(UTC)
    return Track(
        message_id=str(uuid.uuid4()),
        received_at=now,
        timestamp=now,
        event=name,
        properties=properties,
        project_id=source,
        user_id="user-1",
    )


def web_event() -> Track:
    return track("Order Completed", "web", {"order_id": "o-1", "revenue": 12.5})


def flood_events(first: int, count: int) -> list[Track]:
    # Distinct names, each with a few properties, as a script inventing names would send.
    return [
        track(f"Flood Event {index}", "flood", {"index": index, "label": f"l-{index}", "ok": True})
        for index in range(first, first + count)
    ]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def event_tables(warehouse: ClickHouseWarehouse) -> int:
    result = await warehouse.query(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() "
        "AND name NOT IN ('tracks', 'discards', '_event_tables', 'order_completed')"
    )
    return int(result.rows[0][0])


async def run(scenario: str, args: argparse.Namespace, settings: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ss-bench-flood-") as directory:
        chdb_dir = Path(directory)
        config = msgspec_replace(WarehouseConfig(dsn=f"chdb://{chdb_dir}"), settings)
        warehouse = ClickHouseWarehouse(config, config.target(chdb_dir))
        await warehouse.open()
        await warehouse.write([web_event()])
        rss_before = peak_rss_mb()
        result: dict[str, Any] = {"scenario": scenario, "rss_before_mb": round(rss_before)}
        if scenario == "burst":
            started = time.perf_counter()
            await warehouse.write([*flood_events(0, args.names), web_event()])
            result["web_event_wait_s"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            await warehouse.write([web_event()])
            result["next_batch_s"] = round(time.perf_counter() - started, 2)
        else:
            lags: list[float] = []
            start = time.perf_counter()
            for second in range(args.seconds):
                arrival = start + second
                # The worker waits for events that have not arrived yet.
                await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
                batch = [*flood_events(second * args.rate, args.rate), web_event()]
                await warehouse.write(batch)
                lags.append(time.perf_counter() - arrival)
            result["web_event_lag_s"] = {
                "first": round(lags[0], 2),
                "median": round(sorted(lags)[len(lags) // 2], 2),
                "last": round(lags[-1], 2),
                "max": round(max(lags), 2),
            }
        result["event_tables"] = await event_tables(warehouse)
        result["peak_rss_mb"] = round(peak_rss_mb())
        await warehouse.close()
        return result


def msgspec_replace(config: WarehouseConfig, settings: dict[str, str]) -> WarehouseConfig:
    import msgspec

    fields = {**msgspec.structs.asdict(config), **settings}
    return msgspec.convert(fields, WarehouseConfig, strict=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=2500, help="new names in the burst")
    parser.add_argument("--rate", type=int, default=100, help="new names a second, sustained")
    parser.add_argument("--seconds", type=int, default=30, help="length of the sustained run")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--scenario", choices=["burst", "sustained"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    if args.scenario:
        print(json.dumps(asyncio.run(run(args.scenario, args, settings))))
        return
    for scenario in ("burst", "sustained"):
        # A process per scenario: chDB holds one directory per process, and peak RSS is then
        # the scenario's own.
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--scenario", scenario],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            sys.exit(f"{scenario} failed:\n{child.stderr}")
        print(child.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
