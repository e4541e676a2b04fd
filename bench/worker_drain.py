"""The worker alone: how fast it drains a filled stream into the embedded warehouse, and where
its time goes.

    .venv/bin/python bench/worker_drain.py [--events 60000] [--rounds 3] [--redis-url URL]

Appends ``--events`` generated Ecommerce track events (bench/warehouse_insert.py's generator) to
a private stream, 100 per entry as the collector writes them, then runs the real ``Worker`` with
the warehouse-clickhouse sink (a fresh chDB directory) until every entry is acknowledged. The
first 2,000 events create the tables and are not timed. Reports events/s, the process's CPU per
event (chDB's own threads included), and the wall time per event of the phases of a batch,
measured by wrapping them:

- decode: stream entries to Events (``signalsmith.stream.decode_entry``);
- rows: events to rows, flattened (``event_rows``);
- casts: values checked and cast to their columns, schemas evolved (``_prepare``);
- row lists: rows laid out in column order (``_insert`` minus ``_insert_rows``);
- engine: JSON lines encoded and inserted by ClickHouse (``_insert_rows``).

Needs a Redis (``--redis-url``, default the test Redis on 127.0.0.1:6379); its keys go under a
prefix of their own and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from warehouse_insert import make_events

import signalsmith.stream as stream_module
from signalsmith.boot import start_runtime, stop_runtime
from signalsmith.buffer import EventBuffer
from signalsmith.config import Settings
from signalsmith.gc_tuning import tune_gc
from signalsmith.worker import Worker
from signalsmith_warehouse_clickhouse import warehouse as warehouse_module

WARM_EVENTS = 2_000
EVENTS_PER_ENTRY = 100

# Seconds spent in each wrapped function, summed over the timed part of a run.
spent: collections.Counter[str] = collections.Counter()
timing = False


def timed(owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not timing:
            return original(*args, **kwargs)
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


timed(stream_module, "decode_entry", "decode")
timed(warehouse_module, "event_rows", "rows")
timed(warehouse_module.ClickHouseWarehouse, "_prepare", "casts")
timed(warehouse_module.ClickHouseWarehouse, "_insert", "insert")
timed(warehouse_module.ClickHouseWarehouse, "_insert_rows", "engine")
timed(warehouse_module.ClickHouseWarehouse, "write_sync", "write")


async def drain_stream(runtime: Any, stream: str) -> None:
    """Run a worker until every group on ``stream`` has read and acknowledged all of it."""

    async def backlog() -> int:
        groups = await runtime.redis.xinfo_groups(stream)
        return sum(int(g.get("lag") or 0) + int(g["pending"]) for g in groups)

    stop = asyncio.Event()
    task = asyncio.create_task(Worker(runtime).run(stop))
    await asyncio.sleep(0.2)
    # Redis is polled: the backlog lives there, and nothing here is told when it empties.
    while True:
        if await runtime.redis.exists(stream) and await backlog() == 0:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await task


async def drain_once(events: list[Any], redis_url: str) -> tuple[float, float, dict[str, float]]:
    """Events/s, CPU µs/event and phase µs/event for one fill-and-drain."""
    global timing
    prefix = f"bench-drain-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="ss-bench-drain-") as directory:
        os.environ.update(
            SIGNALSMITH_REDIS_URL=redis_url,
            SIGNALSMITH_KEY_PREFIX=prefix,
            SIGNALSMITH_DATA_DIR=directory,
            SIGNALSMITH_LOAD_PLUGINS="warehouse-clickhouse",
        )
        runtime = await start_runtime(Settings.from_env(), "worker")
        buffer = EventBuffer(
            runtime.redis, key_prefix=prefix, backlog_max_entries=0, dedupe_ttl_seconds=600
        )
        stream = f"{prefix}:events"

        async def drain() -> None:
            await drain_stream(runtime, stream)

        try:
            tune_gc()
            for start in range(0, WARM_EVENTS, EVENTS_PER_ENTRY):
                await buffer.append("web", events[start : start + EVENTS_PER_ENTRY])
            await drain()
            for start in range(WARM_EVENTS, len(events), EVENTS_PER_ENTRY):
                await buffer.append("web", events[start : start + EVENTS_PER_ENTRY])
            spent.clear()
            timing = True
            started, cpu = time.perf_counter(), time.process_time()
            await drain()
            elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu
            timing = False
        finally:
            await buffer.close()
            keys = [key async for key in runtime.redis.scan_iter(f"{prefix}:*", count=10_000)]
            for start in range(0, len(keys), 5_000):
                await runtime.redis.delete(*keys[start : start + 5_000])
            await stop_runtime(runtime)
    drained = len(events) - WARM_EVENTS
    per_event = {label: seconds / drained * 1e6 for label, seconds in spent.items()}
    per_event["row lists"] = per_event.pop("insert", 0.0) - per_event.get("engine", 0.0)
    return drained / elapsed, cpu_used / drained * 1e6, per_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    events = make_events(args.events)
    rates, cpus = [], []
    phases: dict[str, list[float]] = collections.defaultdict(list)
    for round_number in range(args.rounds):
        rate, cpu, per_event = asyncio.run(drain_once(events, args.redis_url))
        rates.append(rate)
        cpus.append(cpu)
        for label, value in per_event.items():
            phases[label].append(value)
        print(
            f"round {round_number + 1}: {rate:,.0f} events/s, CPU {cpu:.1f} µs/event",
            flush=True,
        )
    print()
    print(
        f"{args.events - WARM_EVENTS} events drained into the embedded warehouse, "
        f"{args.rounds} rounds, medians: {statistics.median(rates):,.0f} events/s, "
        f"process CPU {statistics.median(cpus):.1f} µs/event"
    )
    print("| phase | wall µs/event |")
    print("|---|---:|")
    for label in ("decode", "write", "rows", "casts", "row lists", "engine"):
        print(f"| {label} | {statistics.median(phases[label]):.1f} |")


if __name__ == "__main__":
    main()
