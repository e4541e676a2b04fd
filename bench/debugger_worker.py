"""What the debugger costs the worker: its sink recording every buffered event, CPU per event.

    .venv/bin/python bench/debugger_worker.py [--events 40000] [--rounds 3]

The collector no longer records the routine path (``wants_routine_outcomes``): the debugger's
sink does, in the worker. This fills a stream on a private ``redis-server`` (no persistence)
with ``--events`` track events shaped like the ingest benchmark's (about 630 bytes as JSON),
100 per entry as the collector writes them, then runs the real ``Worker`` with the debugger
alone (its sink ``debugger`` is the only one) until every entry is acknowledged and the
recorder has flushed. Reports the worker process's CPU per event (reading, decoding and
acknowledging the stream for the sink, encoding the entries, the recorder's writes) and the
Redis server's CPU per event (``INFO cpu``), the medians of the rounds. The first 2,000 events
warm up and are not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from worker_drain import drain_stream

from signalsmith import Event
from signalsmith.boot import start_runtime, stop_runtime
from signalsmith.buffer import EventBuffer
from signalsmith.config import Settings
from signalsmith.embedded import free_port
from signalsmith.gc_tuning import tune_gc
from signalsmith.testing import track
from signalsmith_debugger.state import NAME, DebuggerState

WARM_EVENTS = 2_000
EVENTS_PER_ENTRY = 100


def make_events(count: int) -> list[Event]:
    return [
        msgspec.convert(
            {
                **track(
                    "Order Completed",
                    userId=f"user-{n % 5000}",
                    properties={
                        "orderId": f"order-{n}",
                        "total": 42.5,
                        "currency": "EUR",
                        "products": [{"sku": "sku-1", "price": 21.25, "quantity": 2}],
                        "coupon": "WINTER",
                    },
                    context={
                        "library": {"name": "analytics.js", "version": "2.11.0"},
                        "page": {"path": "/checkout", "url": "https://shop.example.com/checkout"},
                        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
                    },
                ),
                "receivedAt": "2026-03-01T12:00:00Z",
                "projectId": "web",
            },
            Event,
        )
        for n in range(count)
    ]


async def redis_cpu(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def drain_once(events: list[Event], redis_url: str) -> tuple[float, float, float]:
    """Events/s, worker CPU µs/event and Redis CPU µs/event for one fill-and-drain."""
    prefix = f"bench-dbg-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="ss-bench-dbg-") as directory:
        os.environ.update(
            SIGNALSMITH_REDIS_URL=redis_url,
            SIGNALSMITH_KEY_PREFIX=prefix,
            SIGNALSMITH_DATA_DIR=directory,
            SIGNALSMITH_LOAD_PLUGINS="debugger",
        )
        runtime = await start_runtime(Settings.from_env(), "worker")
        state = runtime.state[NAME]
        assert isinstance(state, DebuggerState) and state.recorder is not None
        recorder = state.recorder
        buffer = EventBuffer(
            runtime.redis, key_prefix=prefix, backlog_max_entries=0, dedupe_ttl_seconds=600
        )
        stream = f"{prefix}:events"

        async def drain() -> None:
            await drain_stream(runtime, stream)
            await recorder.flush()

        try:
            tune_gc()
            for start in range(0, WARM_EVENTS, EVENTS_PER_ENTRY):
                await buffer.append("web", events[start : start + EVENTS_PER_ENTRY])
            await drain()
            for start in range(WARM_EVENTS, len(events), EVENTS_PER_ENTRY):
                await buffer.append("web", events[start : start + EVENTS_PER_ENTRY])
            redis_before = await redis_cpu(runtime.redis)
            started, cpu = time.perf_counter(), time.process_time()
            await drain()
            elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu
            redis_used = await redis_cpu(runtime.redis) - redis_before
            assert recorder.unrecorded_total == 0, "the recorder's queue overflowed"
        finally:
            await buffer.close()
            await runtime.redis.flushdb()
            await stop_runtime(runtime)
    drained = len(events) - WARM_EVENTS
    return drained / elapsed, cpu_used / drained * 1e6, redis_used / drained * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # The queue holds a whole drain's flush at once (the recorder flushes every 0.1 s).
    os.environ.setdefault("SIGNALSMITH_DEBUGGER_QUEUE_MAX_OUTCOMES", "200000")
    server = shutil.which("redis-server")
    assert server, "needs redis-server (apt-get install -y redis-server)"
    port = free_port()
    redis_process = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        events = make_events(args.events)
        results: list[Any] = []
        for round_number in range(args.rounds):
            rate, cpu, redis_used = asyncio.run(drain_once(events, f"redis://127.0.0.1:{port}/0"))
            results.append((rate, cpu, redis_used))
            print(
                f"round {round_number + 1}: {rate:,.0f} events/s, worker CPU {cpu:.1f} µs/event, "
                f"Redis CPU {redis_used:.1f} µs/event",
                flush=True,
            )
    finally:
        redis_process.terminate()
        redis_process.wait()
    rates, cpus, redis_cpus = zip(*results, strict=True)
    print(
        f"\n{args.events - WARM_EVENTS} events recorded by the debugger's sink, {args.rounds} "
        f"rounds, medians: {statistics.median(rates):,.0f} events/s, worker CPU "
        f"{statistics.median(cpus):.1f} µs/event, Redis CPU {statistics.median(redis_cpus):.1f} "
        "µs/event"
    )


if __name__ == "__main__":
    main()
