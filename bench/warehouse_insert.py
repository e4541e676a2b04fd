"""Warehouse inserts: the plugin's whole write path against a plain insert of the same rows.

    .venv/bin/python bench/warehouse_insert.py [--events 50000] [--batch 10000] [--rounds 3]

Generates realistic Segment track events (the Ecommerce spec's events, browser-like context)
and, in one chDB directory, alternates two paths for several rounds, each into a fresh database:

- signalsmith: ``ClickHouseWarehouse.write`` in batches of ``--batch`` events, everything
  included: naming the event tables, flattening, type inference, schema evolution (the first
  batch creates the tables), casting, one insert per table per batch.
- plain: ``client.insert`` of the same rows, already flattened and typed, into tables created
  beforehand with the same schema, one insert per table per batch: what clickhouse-connect and
  the engine cost on their own (the plugin hands the engine JSON lines instead, which it parses
  itself).

Rows are counted as written: a track is two rows (``tracks`` and its event's table). Prints
rows/s for each path and the ratio; `bench/RESULTS.md` records the result.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import clickhouse_connect

from signalsmith.model import Track
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse, WarehouseConfig
from signalsmith_warehouse_clickhouse.naming import quote
from signalsmith_warehouse_clickhouse.rows import Flattener, event_rows, fixed_columns
from signalsmith_warehouse_clickhouse.values import cast, kind_of_type

PRODUCTS = [
    {"product_id": f"p-{n}", "sku": f"SKU-{n:05d}", "name": f"Product {n}", "price": 5 + n % 90}
    for n in range(200)
]
CATEGORIES = ["Games", "Books", "Apparel", "Outdoors", "Kitchen"]
PAGES = ["/", "/search", "/cart", "/checkout", "/products/1", "/products/2"]


def _product(rng: random.Random) -> dict[str, Any]:
    product = rng.choice(PRODUCTS)
    return {
        **product,
        "price": round(product["price"] + rng.random(), 2),
        "category": rng.choice(CATEGORIES),
        "brand": "Acme",
        "variant": rng.choice(["red", "blue", "green"]),
        "quantity": rng.randint(1, 3),
        "position": rng.randint(1, 20),
        "url": f"https://shop.example.com/products/{product['product_id']}",
        "image_url": f"https://cdn.example.com/{product['product_id']}.jpg",
    }


def make_events(count: int, seed: int = 7) -> list[Track]:
    rng = random.Random(seed)
    start = datetime.now(UTC)
    events = []
    for index in range(count):
        kind = rng.random()
        if kind < 0.45:
            name, properties = "Product Viewed", _product(rng)
        elif kind < 0.7:
            name, properties = "Product Added", {**_product(rng), "cart_id": f"c-{index % 997}"}
        elif kind < 0.85:
            name = "Products Searched"
            properties = {"query": rng.choice(["shoes", "lamp", "tent", "mug"])}
        elif kind < 0.95:
            name = "Checkout Started"
            products = [_product(rng) for _ in range(rng.randint(1, 4))]
            properties = {
                "order_id": f"o-{index}",
                "value": round(sum(p["price"] * p["quantity"] for p in products), 2),
                "currency": "USD",
                "products": products,
            }
        else:
            name = "Order Completed"
            products = [_product(rng) for _ in range(rng.randint(1, 4))]
            revenue = round(sum(p["price"] * p["quantity"] for p in products), 2)
            properties = {
                "order_id": f"o-{index}",
                "checkout_id": f"co-{index}",
                "total": revenue + 4.99,
                "revenue": revenue,
                "shipping": 4.99,
                "tax": round(revenue * 0.08, 2),
                "discount": 0,
                "coupon": rng.choice(["", "SUMMER", "VIP"]),
                "currency": "USD",
                "products": products,
            }
        received = start + timedelta(milliseconds=index)
        page = rng.choice(PAGES)
        events.append(
            Track(
                message_id=f"ajs-next-{int(received.timestamp() * 1000)}-{uuid.uuid4()}",
                received_at=received,
                timestamp=received - timedelta(milliseconds=rng.randint(0, 300)),
                original_timestamp=received - timedelta(milliseconds=rng.randint(0, 300)),
                sent_at=received,
                user_id=f"user-{rng.randint(1, 5000)}" if rng.random() < 0.6 else None,
                anonymous_id=str(uuid.UUID(int=rng.getrandbits(128))),
                event=name,
                properties=properties,
                project_id="web",
                context={
                    "library": {"name": "analytics.js", "version": "npm:next-1.84.1"},
                    "ip": f"203.0.113.{rng.randint(1, 254)}",
                    "locale": "en-US",
                    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131",
                    "page": {
                        "path": page,
                        "referrer": "https://www.google.com/",
                        "title": "Shop",
                        "url": f"https://shop.example.com{page}",
                        "search": "",
                    },
                },
            )
        )
    return events


def batches(events: list[Track], size: int) -> list[list[Track]]:
    return [events[start : start + size] for start in range(0, len(events), size)]


async def signalsmith_path(
    chdb_dir: Path, database: str, event_batches: list[list[Track]]
) -> tuple[float, int, float]:
    """Seconds, rows written, and the seconds of those spent in clickhouse-connect's inserts
    (encoding included for ``insert``, the engine's own work for both)."""
    config = WarehouseConfig(dsn=f"chdb://{chdb_dir}", database=database)
    warehouse = ClickHouseWarehouse(config, config.target(chdb_dir))
    await warehouse.open()
    writer = warehouse._writer
    assert writer is not None
    in_inserts = 0.0

    def timed(call: Any) -> Any:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            nonlocal in_inserts
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                in_inserts += time.perf_counter() - started

        return timed_call

    # The plugin hands ClickHouse JSON lines (raw_insert); insert is timed too, should it
    # ever use clickhouse-connect's own serialisation again.
    writer.insert = timed(writer.insert)  # type: ignore[method-assign]
    writer.raw_insert = timed(writer.raw_insert)  # type: ignore[method-assign]
    written = 0
    started = time.perf_counter()
    for batch in event_batches:
        report = await warehouse.write(batch)
        written += sum(report.rows.values())
    elapsed = time.perf_counter() - started
    await warehouse.close()
    return elapsed, written, in_inserts


def plain_rows(
    client: Any, schema_database: str, event_batches: list[list[Track]]
) -> tuple[
    dict[str, dict[str, str]], list[list[tuple[str, list[str], list[str], list[list[Any]]]]]
]:
    """Each batch's inserts (table, names, types, rows), flattened and typed ahead of time."""
    tables = {
        name: dict(
            client.query(
                f"SELECT name, type FROM system.columns WHERE database = '{schema_database}' "
                f"AND table = '{name}' ORDER BY position"
            ).result_rows
        )
        for (name,) in client.query(f"SHOW TABLES FROM {quote(schema_database)}").result_rows
        if not name.startswith("_") and name != "discards"
    }
    mapping = dict(
        client.query(
            f"SELECT event_text, table_name FROM {quote(schema_database)}._event_tables FINAL"
        ).result_rows
    )
    loaded_at = datetime.now(UTC)
    flattener = Flattener()
    prepared = []
    for batch in event_batches:
        by_table: dict[str, list[Any]] = {}
        for event in batch:
            for row in event_rows(event, loaded_at, mapping.__getitem__, flattener)[0]:
                columns = tables[row.table]
                values = {
                    name: cast(value, kind_of_type(columns[name]))
                    for name, value in row.values.items()
                }
                by_table.setdefault(row.table, []).append((row, values))
        inserts = []
        for table, rows in by_table.items():
            fixed = list(fixed_columns(table))
            dynamic = sorted({name for _, values in rows for name in values})
            names = fixed + dynamic
            data = [
                [row.fixed.get(n) for n in fixed] + [values.get(n) for n in dynamic]
                for row, values in rows
            ]
            inserts.append((table, names, [tables[table][n] for n in names], data))
        prepared.append(inserts)
    return tables, prepared


def plain_path(
    client: Any,
    database: str,
    tables: dict[str, dict[str, str]],
    prepared: list[list[tuple[str, list[str], list[str], list[list[Any]]]]],
) -> tuple[float, int]:
    client.command(f"CREATE DATABASE {quote(database)}")
    for table, columns in tables.items():
        body = ", ".join(f"{quote(name)} {kind}" for name, kind in columns.items())
        client.command(
            f"CREATE TABLE {quote(database)}.{quote(table)} ({body}) "
            "ENGINE = ReplacingMergeTree(loaded_at) ORDER BY id"
        )
    written = 0
    started = time.perf_counter()
    for inserts in prepared:
        for table, names, types, data in inserts:
            client.insert(
                f"{quote(database)}.{quote(table)}",
                data,
                column_names=names,
                column_type_names=types,
            )
            written += len(data)
    return time.perf_counter() - started, written


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import chdb

    return (
        f"{os.cpu_count()} vCPU ({cpu}), Python {platform.python_version()}, "
        f"clickhouse-connect {clickhouse_connect.__version__}, chdb {chdb.__version__}"
    )


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    events = make_events(args.events)
    event_batches = batches(events, args.batch)
    with tempfile.TemporaryDirectory(prefix="ss-bench-wh-") as directory:
        chdb_dir = Path(directory)
        client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
        # A first run of the plugin settles the schema both paths share; it is not timed.
        asyncio.run(signalsmith_path(chdb_dir, "schema", event_batches[:1]))
        asyncio.run(signalsmith_path(chdb_dir, "schema_full", event_batches))
        tables, prepared = plain_rows(client, "schema_full", event_batches)
        results: dict[str, list[float]] = {"signalsmith": [], "plain": []}
        insert_shares: list[float] = []
        for round_number in range(args.rounds):
            order = ["signalsmith", "plain"] if round_number % 2 == 0 else ["plain", "signalsmith"]
            for path in order:
                database = f"{path}_{round_number}"
                note = ""
                if path == "signalsmith":
                    elapsed, rows, in_inserts = asyncio.run(
                        signalsmith_path(chdb_dir, database, event_batches)
                    )
                    insert_shares.append(in_inserts / elapsed)
                    note = f" ({in_inserts / elapsed:.0%} of it in inserts)"
                else:
                    elapsed, rows = plain_path(client, database, tables, prepared)
                results[path].append(rows / elapsed)
                print(
                    f"round {round_number + 1} {path:<11} {rows:>7} rows in {elapsed:6.2f} s "
                    f"= {rows / elapsed:>9,.0f} rows/s{note}",
                    flush=True,
                )
        client.close()

    ours = statistics.median(results["signalsmith"])
    plain = statistics.median(results["plain"])
    ratios = [a / b for a, b in zip(results["signalsmith"], results["plain"], strict=True)]
    print()
    print(f"commit {commit()}; {machine()}")
    print(f"{args.events} track events in batches of {args.batch}, {args.rounds} rounds, medians:")
    print("| path | rows/s | ratio to plain |")
    print("|---|---:|---:|")
    print(f"| signalsmith write path | {ours:,.0f} | {ours / plain:.2f} |")
    print(f"| plain clickhouse-connect insert | {plain:,.0f} | 1.00 |")
    print(
        f"per-round ratios {min(ratios):.2f}-{max(ratios):.2f}; the write path spent a median "
        f"{statistics.median(insert_shares):.0%} of its time in clickhouse-connect's inserts"
    )


if __name__ == "__main__":
    main()
