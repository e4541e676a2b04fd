"""Stream entry granularity: one entry per request vs one entry per event, in the same run.

    .venv/bin/python bench/stream_granularity.py [--rounds 3] [--seconds 3]

Starts a private Redis (append-only file on, as the embedded default runs it), then alternates
the two layouts for several rounds with 64 concurrent appenders, for single-event requests and
for 100-event batches. Both layouts dedupe every messageId (SET NX EX) in the same Lua script,
so the only difference is the number of stream entries. Prints events/s, Redis CPU µs per event
and the ratio; `docs/buffer.md` records the result.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import redis.asyncio as aioredis

from signalsmith.buffer import EventBuffer
from signalsmith.embedded import RedisServerProcess
from signalsmith.model import Event, Track, event_list_encoder

PER_EVENT_SCRIPT = """
local n = tonumber(ARGV[4])
local dups = {}
for i = 1, n do
  if redis.call('SET', ARGV[2] .. ARGV[4 + n + i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'v', '1', 'src', ARGV[3], 'd', ARGV[4 + i])
  else
    dups[#dups + 1] = i - 1
  end
end
return dups
"""


class EntryPerEventBuffer(EventBuffer):
    """The alternative layout: the same coalescing and dedupe, but one stream entry per event."""

    script_source = PER_EVENT_SCRIPT

    def _script_args(self, source_id: str, events: Sequence[Event]) -> list[object]:
        return [
            self._dedupe_ttl,
            self._seen_prefix,
            source_id,
            len(events),
            *(event_list_encoder.encode([event]) for event in events),
            *(event.message_id for event in events),
        ]


def make_events(count: int) -> list[Track]:
    now = datetime.now(UTC)
    return [
        Track(
            message_id=str(uuid.uuid4()),
            received_at=now,
            timestamp=now,
            user_id="user-1",
            event="Order Completed",
            properties={"revenue": 19.99, "currency": "USD", "sku": "s1", "qty": 2},
            context={"library": {"name": "bench", "version": "0"}, "ip": "203.0.113.9"},
        )
        for _ in range(count)
    ]


async def run_layout(
    client: aioredis.Redis, layout: str, batch: int, seconds: float, prefix: str
) -> float:
    layout_class = EventBuffer if layout == "entry-per-request" else EntryPerEventBuffer
    buffer = layout_class(client, key_prefix=prefix, backlog_max_entries=0, dedupe_ttl_seconds=3600)
    deadline = time.perf_counter() + seconds
    done = 0

    async def appender() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await buffer.append("bench", make_events(batch))
            done += batch

    start = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(64)))
    elapsed = time.perf_counter() - start
    await buffer.close()
    return done / elapsed


def redis_cpu_seconds(info: dict[str, float]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, RedisServerProcess(data) as server:
        client = aioredis.Redis.from_url(server.url)
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for batch in (1, 100):
                for layout in ("entry-per-request", "entry-per-event"):
                    prefix = f"bench:{uuid.uuid4().hex[:8]}"
                    before = redis_cpu_seconds(await client.info("cpu"))
                    rate = await run_layout(client, layout, batch, args.seconds, prefix)
                    after = redis_cpu_seconds(await client.info("cpu"))
                    events = rate * args.seconds
                    results.setdefault((layout, batch), []).append(
                        (rate, (after - before) / events * 1e6)
                    )
                    await client.flushall()
        await client.aclose()
    print(f"{'layout':<20} {'batch':>5} {'events/s':>10} {'redis µs/event':>15}")
    for (layout, batch), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{layout:<20} {batch:>5} {rate:>10,.0f} {cpu:>15.1f}")
    for batch in (1, 100):
        a = statistics.median(r for r, _ in results[("entry-per-request", batch)])
        b = statistics.median(r for r, _ in results[("entry-per-event", batch)])
        print(f"batch {batch}: entry-per-request / entry-per-event = {a / b:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
