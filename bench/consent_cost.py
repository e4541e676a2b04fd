"""What the consent stage costs per event, with and without remembered preferences.

    .venv/bin/python bench/consent_cost.py [--repeat 300]

The plugin's whole stage (``ConsentStage.run``: the one Redis read of the batch's identities,
judging every event against the sinks its source feeds, stamping, the writes it decides on) is
called on 100-event batches from 20 users, against a private ``redis-server`` on loopback TCP
without persistence, as a collector calls it. The source feeds three destinations: one needing
``Analytics``, one needing ``Advertising``, one needing nothing (so no event is dropped and the
batch stays the same from call to call). Scenarios:

- ``own consent``: every event carries ``context.consent.categoryPreferences`` (analytics-next's
  consent wrapper stamps each one), and Redis already remembers the same choice: one read, no
  write (the steady state of a browser source);
- ``own consent, observed``: the same with an observer installed: an outcome per event for the
  sink it will not reach;
- ``remembered``: no event carries consent (a server-side source); each user's choice is
  remembered: one read, every event stamped with its user's preferences;
- ``nothing remembered``: no consent and nothing remembered: one read, nothing else;
- ``not remembering``: ``consent.remember: false``, events with their own consent: no Redis at
  all, the judging alone.

The figure is wall time per event of the call (median of ``--repeat`` calls), which includes
the loopback round trip of the read (shared by the batch's 100 events).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from signalsmith import Source
from signalsmith.embedded import RedisServerProcess
from signalsmith.testing import track
from signalsmith.testing.transforms import events_of
from signalsmith_consent.memory import ConsentMemory
from signalsmith_consent.section import BuiltConsent
from signalsmith_consent.settings import ConsentSection
from signalsmith_consent.stage import ConsentStage

BATCH = 100
USERS = 20
PREFERENCES = {"Analytics": True, "Advertising": False}
NEEDS = (("amplitude", ("Analytics",)), ("gads", ("Advertising",)), ("open", ()))


def messages(*, with_consent: bool) -> list[dict[str, Any]]:
    batch = []
    for index in range(BATCH):
        user = f"user-{index % USERS:02d}"
        context: dict[str, Any] = {"library": {"name": "analytics.js", "version": "next-1.84.3"}}
        if with_consent:
            context["consent"] = {"categoryPreferences": dict(PREFERENCES)}
        batch.append(
            track(
                "Product Viewed",
                userId=user,
                anonymousId=f"anon-{user}",
                context=context,
                properties={"sku": f"sku-{index}", "price": 19.99},
            )
        )
    return batch


def built(*, remember: bool) -> BuiltConsent:
    section = ConsentSection(categories=("Analytics", "Advertising"), remember=remember)
    return BuiltConsent(section, declared=True, destinations={"bench": NEEDS})


async def per_event(stage: ConsentStage, events: list[Any], repeat: int) -> float:
    for _ in range(20):  # warm: scripts loaded, connections open
        await stage.run(events)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await stage.run(events)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / len(events) * 1e6


async def read_cost(memory: ConsentMemory, events: list[Any], repeat: int) -> float:
    """The memory read alone (the batch's identities, one command), per event."""
    wanted = list(dict.fromkeys(i for e in events for i in (e.user_id, e.anonymous_id) if i))
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await memory.read(wanted)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / len(events) * 1e6


async def measure(redis_url: str, repeat: int) -> list[tuple[str, float, int]]:
    redis = aioredis.Redis.from_url(redis_url)
    source = Source(id="bench", name="bench")
    memory = ConsentMemory(redis, "bench", 86_400)
    with_consent = events_of(messages(with_consent=True), source_id="bench")
    without = events_of(messages(with_consent=False), source_id="bench")
    results = []
    try:

        async def run(
            name: str, events: list[Any], *, remember: bool = True, observed: bool = False
        ) -> None:
            stage = ConsentStage(source, built(remember=remember), NEEDS, memory, observed=observed)
            before = int((await redis.info("stats"))["total_commands_processed"])
            cost = await per_event(stage, events, repeat)
            after = int((await redis.info("stats"))["total_commands_processed"])
            # Commands per call (the INFO call itself counts one).
            results.append((name, cost, round((after - before - 1) / (repeat + 20))))

        await redis.flushdb()
        await run("nothing remembered", without)
        # The first calls remember every user's choice; the measured ones only read it.
        await run("own consent", with_consent)
        await run("own consent, observed", with_consent, observed=True)
        await run("remembered", without)
        await run("not remembering", with_consent, remember=False)
        before = int((await redis.info("stats"))["total_commands_processed"])
        cost = await read_cost(memory, without, repeat)
        after = int((await redis.info("stats"))["total_commands_processed"])
        commands = round((after - before - 1) / repeat)
        results.append(("(the read alone: 40 identities)", cost, commands))
    finally:
        await redis.flushdb()
        await redis.aclose()
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="consent-bench-") as directory:
        server = RedisServerProcess(Path(directory), appendonly=False).start()
        try:
            results = asyncio.run(measure(server.url, args.repeat))
        finally:
            server.stop()
    print(
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print(f"Command: `python bench/consent_cost.py --repeat {args.repeat}`\n")
    print("| scenario | µs per event (100-event batch) | Redis commands per batch |")
    print("|---|---|---|")
    for name, cost, commands in results:
        print(f"| {name} | {cost:.2f} | {commands} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
