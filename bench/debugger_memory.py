"""Redis memory per event traced by the debugger, at three event sizes.

    .venv/bin/python bench/debugger_memory.py [--redis-url redis://127.0.0.1:6379/0] [--events 4000]

The collector app with the debugger (and a static write key), and then a worker with the
debugger, which records the buffered events (its sink), alone or beside one sink (a warehouse
that keeps nothing) whose deliveries it records too, on the Redis given, under a key prefix of
its own (removed afterwards): the bytes the debugger accounts against its cap, and what
``MEMORY USAGE key SAMPLES 0`` finds in the trace slices and the live streams, per event.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import uuid

import msgspec
import redis.asyncio as aioredis

import signalsmith_debugger.plugin as debugger
from signalsmith import Settings, Sink, Source, hookimpl
from signalsmith.testing import (
    StaticKeys,
    collector_client,
    running_worker,
    track,
)


class Warehouse:
    """A warehouse sink that writes nothing: only its delivery outcomes matter here."""

    @hookimpl
    def register_warehouses(self, register):  # type: ignore[no-untyped-def]
        register(Sink(name="warehouse", max_wait_seconds=0.05, batch_size=1000))

    @hookimpl
    def write_events(self, warehouse, events):  # type: ignore[no-untyped-def]
        return None


async def usage(redis: aioredis.Redis, pattern: str) -> int:
    return sum(
        [await redis.memory_usage(key, samples=0) or 0 async for key in redis.scan_iter(pattern)]
    )


async def measure(redis_url: str, count: int, note_size: int, deliver: bool) -> str:
    prefix = f"bench-debugger:{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_url, key_prefix=prefix, data_dir="/tmp/bench-debugger", worker_block_ms=100
    )
    redis = aioredis.Redis.from_url(redis_url)
    keys = StaticKeys({"bench-key": Source(id="web", name="web")})
    auth = {"Authorization": "Basic " + base64.b64encode(b"bench-key:").decode()}
    try:
        async with collector_client(settings, keys, (debugger, "debugger")) as client:
            for start in range(0, count, 100):
                batch = [
                    track(
                        "Order Completed",
                        userId=f"user-{n}",
                        properties={"note": "x" * note_size, "price": n, "sku": f"sku-{n}"},
                        context={
                            "library": {"name": "analytics.js", "version": "2.1"},
                            "page": {"url": "https://shop.example.com/checkout"},
                        },
                    )
                    for n in range(start, start + 100)
                ]
                await client.post("/v1/batch", json={"batch": batch}, headers=auth)
            # The worker records the buffered events (the debugger's sink), and with a sink
            # beside it, that sink's deliveries.
            sinks = (Warehouse(),) if deliver else ()
            async with running_worker(settings, (debugger, "debugger"), *sinks):
                for _ in range(600):
                    await asyncio.sleep(0.1)
                    groups = await redis.xinfo_groups(f"{prefix}:events")
                    if len(groups) == 1 + len(sinks) and all(
                        group["pending"] == 0 and group["lag"] == 0 for group in groups
                    ):
                        break
                await asyncio.sleep(0.5)  # the worker's last flush
        slices = await redis.hgetall(f"{prefix}:debugger:trace-slices")
        accounted = sum(int(size) for size in slices.values())
        used = await usage(redis, f"{prefix}:debugger:trace:*")
        live = await usage(redis, f"{prefix}:debugger:live:*")
        sent = len(msgspec.json.encode(batch[0]))
        return (
            f"| {sent:,} bytes | {'buffered + 1 sink' if deliver else 'buffered'} "
            f"| {accounted / count:,.0f} | {used / count:,.0f} | {live / count:,.1f} |"
        )
    finally:
        keys_left = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys_left:
            await redis.delete(*keys_left)
        await redis.aclose()


async def main(redis_url: str, count: int) -> None:
    os.environ.setdefault("SIGNALSMITH_DEBUGGER_FLUSH_SECONDS", "0.1")
    print(
        "| event as sent | recorded by | accounted B/event | trace MEMORY USAGE B/event "
        "| live streams B/event |"
    )
    print("|---|---|---|---|---|")
    for note_size in (10, 300, 1500):
        for deliver in (False, True):
            print(await measure(redis_url, count, note_size, deliver))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=4000)
    args = parser.parse_args()
    asyncio.run(main(args.redis_url, args.events))
