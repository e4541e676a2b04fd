"""The worker against a real Redis: delivery, acknowledgement, retries, dead letters, reclaim, trim.

Every test waits on observable state (what a sink received, XPENDING, stream lengths) with a
generous deadline; nothing asserts how fast anything happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import signal
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from signalsmith import hookimpl
from signalsmith.boot import start_runtime, stop_runtime
from signalsmith.buffer import EventBuffer
from signalsmith.config import Settings
from signalsmith.model import Event, Page, Track, event_list_decoder, event_list_encoder
from signalsmith.plugins import PluginConfigError, build_plugin_manager
from signalsmith.records import (
    DeliveryReport,
    Outcome,
    PermanentSinkError,
    Routing,
    Sink,
    SinkError,
    WorkspaceSection,
)
from signalsmith.stream import dead_letter_key, stream_key, trim_acknowledged
from signalsmith.testing import (
    RunningWorker,
    capture_sink_plugin,
    forwarding,
    message_id,
    running_worker,
)
from signalsmith.worker import Worker

DEADLINE_SECONDS = 30.0


# --- helpers ------------------------------------------------------------------------------------


def make_events(count: int, source: str = "src-1") -> list[Event]:
    now = datetime.now(UTC)
    return [
        Track(
            message_id=message_id(),
            received_at=now,
            timestamp=now,
            event=f"Event {index}",
            project_id=source,
        )
        for index in range(count)
    ]


@contextlib.asynccontextmanager
async def event_buffer(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[EventBuffer]:
    buffer = EventBuffer(
        redis,
        key_prefix=settings.key_prefix,
        backlog_max_entries=settings.backlog_max_entries,
        dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
    )
    try:
        yield buffer
    finally:
        await buffer.close()


async def wait_until(condition: Callable[[], Any], what: str) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail after a generous deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def delivered_ids(batches: list[list[Event]]) -> list[str]:
    return [event.message_id for batch in batches for event in batch]


async def pending_count(redis: aioredis.Redis, settings: Settings, group: str) -> int:
    summary = await redis.xpending(stream_key(settings.key_prefix), group)
    return int(summary["pending"])


async def group_caught_up(redis: aioredis.Redis, settings: Settings, group: str) -> bool:
    """Every entry of the stream was delivered to ``group`` and acknowledged."""
    stream = stream_key(settings.key_prefix)
    groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
    if group not in groups:
        return False
    last = await redis.xrevrange(stream, count=1)
    read_all = not last or groups[group]["last-delivered-id"] == last[0][0]
    return read_all and await pending_count(redis, settings, group) == 0


async def dead_letters(
    redis: aioredis.Redis, settings: Settings, sink: str
) -> list[dict[str, Any]]:
    entries = await redis.xrange(dead_letter_key(settings.key_prefix, sink))
    return [{key.decode(): value for key, value in fields.items()} for _, fields in entries]


def dead_lettered_ids(entries: list[dict[str, Any]]) -> list[str]:
    return [event.message_id for e in entries for event in event_list_decoder.decode(e["d"])]


class RecordingObserver:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    @hookimpl
    async def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        self.outcomes.extend(outcomes)

    def of(self, status: str, sink: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status and o.sink == sink]


class BrokenObserver:
    @hookimpl
    def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        raise RuntimeError("observer bug")


# --- delivery -------------------------------------------------------------------------------------


async def test_every_event_delivered_once_duplicates_skipped_entries_acked(
    settings: Settings, redis: aioredis.Redis
) -> None:
    capture = capture_sink_plugin("capture", batch_size=4, max_wait_seconds=0.05)
    first, second, later = make_events(5), make_events(5), make_events(2)
    async with event_buffer(redis, settings) as buffer:
        assert await buffer.append("src-1", first) == []
        assert await buffer.append("src-1", second) == []
        # Two already-buffered events with two new ones: the entry lists indexes 0,1 in `dup`.
        assert await buffer.append("src-1", [first[3], second[4], *later]) == [0, 1]
        # Nothing new at all: no entry is written.
        assert await buffer.append("src-1", [first[0]]) == [0]
    # An entry whose events are all duplicates (as a collector that raced another would leave).
    all_dup = make_events(2)
    await redis.xadd(
        stream_key(settings.key_prefix),
        {"v": "1", "src": "src-1", "n": 2, "d": event_list_encoder.encode(all_dup), "dup": "0,1"},
    )
    expected = [e.message_id for e in [*first, *second, *later]]

    async with running_worker(settings, (capture.plugin, capture.name)):
        await wait_until(
            lambda: group_caught_up(redis, settings, "capture"), "every entry acknowledged"
        )
    assert Counter(delivered_ids(capture.batches)) == Counter(expected)
    assert all(0 < len(batch) <= 5 for batch in capture.batches)  # an entry is never split
    assert await pending_count(redis, settings, "capture") == 0


async def test_new_events_after_start_are_delivered(
    settings: Settings, redis: aioredis.Redis
) -> None:
    capture = capture_sink_plugin("capture", batch_size=100, max_wait_seconds=0.05)
    async with running_worker(settings, (capture.plugin, capture.name)):
        expected: list[str] = []
        async with event_buffer(redis, settings) as buffer:
            for _ in range(5):
                events = make_events(3)
                expected += [e.message_id for e in events]
                await buffer.append("src-1", events)
        await wait_until(lambda: len(delivered_ids(capture.batches)) >= 15, "15 events")
        await wait_until(lambda: group_caught_up(redis, settings, "capture"), "acks")
    assert sorted(delivered_ids(capture.batches)) == sorted(expected)


async def test_warehouse_sinks_get_write_events(settings: Settings, redis: aioredis.Redis) -> None:
    written: list[Event] = []

    class Warehouse:
        @hookimpl
        def register_warehouses(self, register: Callable[[Sink], None]) -> None:
            register(Sink(name="lake", max_wait_seconds=0.05))

        @hookimpl
        def write_events(self, warehouse: Sink, events: list[Event]) -> None:
            assert warehouse.kind == "warehouse"
            written.extend(events)

    events = make_events(4)
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", events)
    async with running_worker(settings, (Warehouse(), "warehouse")):
        await wait_until(lambda: group_caught_up(redis, settings, "lake"), "acks")
    assert [e.message_id for e in written] == [e.message_id for e in events]


async def test_undecodable_entry_is_dead_lettered_as_written_and_others_delivered(
    settings: Settings, redis: aioredis.Redis
) -> None:
    capture = capture_sink_plugin("capture", max_wait_seconds=0.05)
    stream = stream_key(settings.key_prefix)
    bad_id = await redis.xadd(stream, {"v": "1", "src": "src-9", "n": 1, "d": b"\xc1garbage"})
    good = make_events(3)
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", good)
    async with running_worker(settings, (capture.plugin, capture.name)):
        await wait_until(lambda: group_caught_up(redis, settings, "capture"), "acks")
    assert delivered_ids(capture.batches) == [e.message_id for e in good]
    [letter] = await dead_letters(redis, settings, "capture")
    assert letter["d"] == b"\xc1garbage"
    assert letter["src"] == b"src-9"
    assert letter["entry_ids"] == bad_id
    assert b"undecodable" in letter["error"]


# --- failures -------------------------------------------------------------------------------------


async def test_failing_sink_is_dead_lettered_while_healthy_sink_gets_everything(
    settings: Settings, redis: aioredis.Redis
) -> None:
    calls: list[int] = []

    def always_fail(events: list[Event]) -> None:
        calls.append(len(events))
        raise SinkError("boom: destination is down")

    failing = capture_sink_plugin(
        "failing", deliver=always_fail, max_attempts=3, batch_size=5, max_wait_seconds=0.05
    )
    healthy = capture_sink_plugin("healthy", batch_size=5, max_wait_seconds=0.05)
    observer = RecordingObserver()
    events = make_events(12)
    async with event_buffer(redis, settings) as buffer:
        for start in range(0, 12, 4):
            await buffer.append("src-1", events[start : start + 4])
    expected = sorted(e.message_id for e in events)

    async with running_worker(
        settings,
        (failing.plugin, failing.name),
        (healthy.plugin, healthy.name),
        (BrokenObserver(), "broken-observer"),
        (observer, "observer"),
    ):
        await wait_until(lambda: group_caught_up(redis, settings, "healthy"), "healthy acks")
        await wait_until(lambda: group_caught_up(redis, settings, "failing"), "failing acks")

    assert sorted(delivered_ids(healthy.batches)) == expected
    assert failing.batches == []
    letters = await dead_letters(redis, settings, "failing")
    assert sorted(dead_lettered_ids(letters)) == expected
    stream_ids = {entry_id for entry_id, _ in await redis.xrange(stream_key(settings.key_prefix))}
    for letter in letters:
        assert letter["attempts"] == b"3"
        assert letter["sink"] == b"failing"
        assert b"boom: destination is down" in letter["error"]
        assert set(letter["entry_ids"].split(b",")) <= stream_ids
        datetime.fromisoformat(letter["failed_at"].decode().replace("Z", "+00:00"))
    # Every batch was tried exactly max_attempts times.
    assert len(calls) == 3 * len(letters)
    assert await redis.xlen(dead_letter_key(settings.key_prefix, "healthy")) == 0
    # Observers saw it all, although another observer kept raising.
    assert sorted(o.message_id for o in observer.of("dead_lettered", "failing")) == expected
    assert Counter(o.message_id for o in observer.of("retried", "failing")) == Counter(
        {message: 2 for message in expected}
    )
    assert sorted(o.message_id for o in observer.of("delivered", "healthy")) == expected
    assert all(o.source_id == "src-1" and o.stage == "deliver" for o in observer.outcomes)
    assert all("boom" in (o.reason or "") for o in observer.of("dead_lettered", "failing"))


async def test_permanent_error_dead_letters_without_retrying(
    settings: Settings, redis: aioredis.Redis
) -> None:
    calls: list[int] = []

    def refuse(events: list[Event]) -> None:
        calls.append(len(events))
        raise PermanentSinkError("401: bad credentials")

    failing = capture_sink_plugin("failing", deliver=refuse, max_attempts=5, max_wait_seconds=0.05)
    events = make_events(3)
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", events)
    async with running_worker(settings, (failing.plugin, failing.name)):
        await wait_until(lambda: group_caught_up(redis, settings, "failing"), "acks")
    [letter] = await dead_letters(redis, settings, "failing")
    assert letter["attempts"] == b"1"
    assert dead_lettered_ids([letter]) == [e.message_id for e in events]
    assert calls == [3]


async def test_retry_after_is_honoured_and_a_recovered_sink_delivers_once(
    settings: Settings, redis: aioredis.Redis
) -> None:
    retry_after = 0.3  # far above the backoff cap of the test settings (0.05 s)
    attempts: list[float] = []

    def fail_twice(events: list[Event]) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise SinkError("429: slow down", retry_after=retry_after)

    flaky = capture_sink_plugin("flaky", deliver=fail_twice, max_attempts=5, max_wait_seconds=0.05)
    observer = RecordingObserver()
    events = make_events(4)
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", events)
    async with running_worker(settings, (flaky.plugin, flaky.name), (observer, "observer")):
        await wait_until(lambda: group_caught_up(redis, settings, "flaky"), "acks")

    assert len(attempts) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert all(gap >= retry_after - 0.01 for gap in gaps), gaps
    assert flaky.batches == [events]
    assert await redis.xlen(dead_letter_key(settings.key_prefix, "flaky")) == 0
    assert len(observer.of("retried", "flaky")) == 2 * len(events)
    assert [o.message_id for o in observer.of("delivered", "flaky")] == [
        e.message_id for e in events
    ]


async def test_a_raising_sink_never_crashes_the_loop(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A plugin bug (not a SinkError) is retried like one, and the loop goes on afterwards."""
    calls: list[int] = []

    def buggy_once(events: list[Event]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise KeyError("plugin bug")

    sink = capture_sink_plugin("buggy", deliver=buggy_once, max_attempts=2, max_wait_seconds=0.05)
    async with running_worker(settings, (sink.plugin, sink.name)) as running:
        async with event_buffer(redis, settings) as buffer:
            first = make_events(2)
            await buffer.append("src-1", first)
            await wait_until(lambda: len(sink.batches) == 1, "first batch")
            second = make_events(2)
            await buffer.append("src-1", second)
            await wait_until(lambda: len(sink.batches) == 2, "second batch")
        assert not running.task.done()
    assert sink.batches == [first, second]


# --- shutdown and outages -------------------------------------------------------------------------


async def test_stop_finishes_the_batch_in_flight(settings: Settings, redis: aioredis.Redis) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def gate(events: list[Event]) -> None:
        entered.set()
        await release.wait()

    capture = capture_sink_plugin("capture", deliver=gate, max_wait_seconds=0.05)
    events = make_events(3)
    async with running_worker(settings, (capture.plugin, capture.name)) as running:
        async with event_buffer(redis, settings) as buffer:
            await buffer.append("src-1", events)
        await asyncio.wait_for(entered.wait(), DEADLINE_SECONDS)
        running.stop_event.set()
        await asyncio.sleep(0.2)
        assert not running.task.done()  # it waits for the sink, whose call is still running
        release.set()
        await asyncio.wait_for(running.task, DEADLINE_SECONDS)
        assert capture.batches == [events]
        assert await pending_count(redis, settings, "capture") == 0


class ReadAhead:
    """A worker held in its first delivery while three more entries wait, read ahead."""

    def __init__(self, running: RunningWorker, capture: Any, release: asyncio.Event) -> None:
        self.running = running
        self.capture = capture
        self.release = release
        self.deliveries = 0
        self.first = make_events(3)
        self.read_ahead = [make_events(4) for _ in range(3)]


@contextlib.asynccontextmanager
async def held_with_entries_read_ahead(
    settings: Settings, redis: aioredis.Redis
) -> AsyncIterator[ReadAhead]:
    entered = asyncio.Event()
    release = asyncio.Event()
    state: ReadAhead | None = None

    async def gate_the_first(events: list[Event]) -> None:
        assert state is not None
        state.deliveries += 1
        if state.deliveries == 1:
            entered.set()
            await release.wait()

    capture = capture_sink_plugin(
        "capture", deliver=gate_the_first, batch_size=100, max_wait_seconds=0.05
    )
    async with running_worker(settings, (capture.plugin, capture.name)) as running:
        state = ReadAhead(running, capture, release)
        async with event_buffer(redis, settings) as buffer:
            await buffer.append("src-1", state.first)
            await asyncio.wait_for(entered.wait(), DEADLINE_SECONDS)
            for events in state.read_ahead:
                await buffer.append("src-1", events)
        # Still delivering the first batch, the consumer has already taken the next entries
        # (they are pending to it: 1 entry in flight + 3 read ahead).
        await wait_until(_pending_is(redis, settings, "capture", 4), "the entries read ahead")
        yield state


async def test_the_next_batch_is_read_while_one_is_delivered(
    settings: Settings, redis: aioredis.Redis
) -> None:
    async with held_with_entries_read_ahead(settings, redis) as held:
        assert held.deliveries == 1 and not held.capture.batches
        # Once the first batch is done they go out together, in stream order, once.
        held.release.set()
        await wait_until(lambda: group_caught_up(redis, settings, "capture"), "acks")
        assert not held.running.task.done()
    assert [[e.message_id for e in batch] for batch in held.capture.batches] == [
        [e.message_id for e in held.first],
        [e.message_id for events in held.read_ahead for e in events],
    ]


async def test_a_slow_sink_holds_about_a_batch_of_batched_entries_not_the_stream(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Entries of batch requests hold a hundred events each: a sink whose delivery takes long
    reads ahead about one more batch of events, not as many entries as its batch has events
    (which would hold, and decode, a hundred times more)."""
    release = asyncio.Event()
    calls: list[int] = []

    async def slow(events: list[Event]) -> None:
        calls.append(len(events))
        await release.wait()

    sink = capture_sink_plugin("slow", deliver=slow, batch_size=200, max_wait_seconds=0.05)
    async with event_buffer(redis, settings) as buffer:
        for _ in range(60):
            await buffer.append("src-1", make_events(100))
    async with running_worker(settings, (sink.plugin, sink.name)):
        await wait_until(lambda: calls, "the first delivery")
        await asyncio.sleep(0.5)  # read-ahead polls every 20 ms meanwhile
        held = await pending_count(redis, settings, "slow")
        # The batch in flight (2 entries), the next batch read ahead (2), and a first read of a
        # few entries before the consumer knew their size.
        assert held <= 2 + 2 + 16, held
        release.set()
        await wait_until(lambda: group_caught_up(redis, settings, "slow"), "acks")
    assert sum(calls) == 6000
    assert max(calls) <= 16 * 100


async def test_entries_read_ahead_by_a_stopping_worker_are_taken_over_at_once(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # A claim idle time far past this test's deadline: only the release makes B take them.
    settings = msgspec.structs.replace(settings, worker_claim_idle_ms=600_000)
    async with held_with_entries_read_ahead(settings, redis) as held:
        held.running.stop_event.set()
        held.release.set()
        await asyncio.wait_for(held.running.task, DEADLINE_SECONDS)
    # A delivered its batch in flight and kept the rest pending, idle as long as the claim idle
    # time already, so any worker's next reclaim takes them.
    assert held.capture.batches == [held.first]
    stream = stream_key(settings.key_prefix)
    pending = await redis.xpending_range(stream, "capture", min="-", max="+", count=10)
    assert len(pending) == 3
    assert all(p["time_since_delivered"] >= settings.worker_claim_idle_ms for p in pending)

    b = capture_sink_plugin("capture", batch_size=100, max_wait_seconds=0.05)
    async with running_worker(settings, (b.plugin, b.name)):
        await wait_until(lambda: group_caught_up(redis, settings, "capture"), "B's acks")
    assert sorted(delivered_ids(b.batches)) == sorted(
        e.message_id for events in held.read_ahead for e in events
    )


def _pending_is(
    redis: aioredis.Redis, settings: Settings, group: str, count: int
) -> Callable[[], Any]:
    async def check() -> bool:
        return await pending_count(redis, settings, group) == count

    return check


async def test_worker_survives_redis_going_away(
    settings: Settings, redis_server_factory: Callable[..., Any]
) -> None:
    server = redis_server_factory()
    private = msgspec.structs.replace(settings, redis_url=server.url)
    client = aioredis.Redis.from_url(server.url)
    capture = capture_sink_plugin("capture", max_wait_seconds=0.05)
    try:
        async with running_worker(private, (capture.plugin, capture.name)) as running:
            before = make_events(3)
            async with event_buffer(client, private) as buffer:
                await buffer.append("src-1", before)
            await wait_until(lambda: len(delivered_ids(capture.batches)) == 3, "first events")

            server.stop()
            await asyncio.sleep(0.5)  # the loop hits connection errors meanwhile
            server.start()
            await client.connection_pool.disconnect()

            after = make_events(3)
            async with event_buffer(client, private) as buffer:
                await buffer.append("src-1", after)
            await wait_until(lambda: len(delivered_ids(capture.batches)) >= 6, "events after")
            await wait_until(lambda: group_caught_up(client, private, "capture"), "acks")
            assert not running.task.done()
    finally:
        await client.aclose()
    assert Counter(delivered_ids(capture.batches)) == Counter(
        e.message_id for e in [*before, *after]
    )


# --- reclaim ---------------------------------------------------------------------------------------

STUCK_WORKER = textwrap.dedent(
    """
    import asyncio, pathlib, sys

    from signalsmith import hookimpl
    from signalsmith.config import Settings
    from signalsmith.plugins import build_plugin_manager
    from signalsmith.records import Sink
    from signalsmith.boot import start_runtime
    from signalsmith.worker import Worker

    redis_url, key_prefix, consumer, marker = sys.argv[1:5]

    class Stuck:
        @hookimpl
        def register_destinations(self, register):
            register(Sink(name="capture", batch_size=1000, max_wait_seconds=0.2))

        @hookimpl
        async def deliver_events(self, destination, events):
            pathlib.Path(marker).write_text(str(len(events)))
            await asyncio.sleep(3600)  # a hung destination; the process is killed meanwhile

    async def main():
        settings = Settings(redis_url=redis_url, key_prefix=key_prefix, worker_block_ms=100)
        pm = build_plugin_manager(load_entry_points=False, extra_plugins=[(Stuck(), "stuck")])
        runtime = await start_runtime(settings, "worker", pm=pm)
        await Worker(runtime, consumer=consumer).run(asyncio.Event())

    asyncio.run(main())
    """
)


async def test_entries_of_a_killed_worker_are_reclaimed_by_another(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    events = make_events(12)
    async with event_buffer(redis, settings) as buffer:
        for start in range(0, 12, 3):
            await buffer.append("src-1", events[start : start + 3])
    stream = stream_key(settings.key_prefix)
    entry_count = await redis.xlen(stream)
    assert entry_count == 4

    # Worker A: a real process whose sink hangs; it takes every entry, then is killed -9.
    marker = tmp_path / "delivering"
    stderr = tmp_path / "worker-a.log"
    consumer_a = f"worker-a-{os.getpid()}"
    with stderr.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            STUCK_WORKER,
            settings.redis_url or "",
            settings.key_prefix,
            consumer_a,
            str(marker),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    try:

        def a_is_delivering() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"worker A exited early:\n{stderr.read_text()}")
            return marker.exists()

        await wait_until(a_is_delivering, "worker A to start delivering")
        summary = await redis.xpending(stream, "capture")
        assert summary["pending"] == entry_count
        assert [c["name"] for c in summary["consumers"]] == [consumer_a.encode()]
        assert marker.read_text() == "12"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), DEADLINE_SECONDS)
    assert process.returncode == -signal.SIGKILL

    # Worker B: reclaims A's entries once they have been idle for worker_claim_idle_ms.
    capture = capture_sink_plugin("capture", batch_size=1000, max_wait_seconds=0.05)
    async with running_worker(settings, (capture.plugin, capture.name)) as running:
        assert running.worker.consumer != consumer_a
        await wait_until(lambda: len(delivered_ids(capture.batches)) >= 12, "all 12 events")
        await wait_until(lambda: group_caught_up(redis, settings, "capture"), "acks")
    assert Counter(delivered_ids(capture.batches)) == Counter(e.message_id for e in events)
    # Nothing was read anew: everything B delivered came from A's pending entries.
    info = {g["name"]: g for g in await redis.xinfo_groups(stream)}[b"capture"]
    assert info["entries-read"] == entry_count


async def test_entries_of_a_cancelled_worker_are_reclaimed(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """The same, in process: worker A's task is cancelled while its sink holds the batch."""
    entered = asyncio.Event()

    async def hang(events: list[Event]) -> None:
        entered.set()
        await asyncio.Event().wait()

    stuck = capture_sink_plugin("capture", deliver=hang, max_wait_seconds=0.05)
    events = make_events(6)
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", events[:3])
        await buffer.append("src-1", events[3:])
    pm = build_plugin_manager(load_entry_points=False, extra_plugins=[(stuck.plugin, "stuck")])
    runtime = await start_runtime(settings, "worker", pm=pm)
    try:
        task = asyncio.create_task(Worker(runtime).run(asyncio.Event()))
        await asyncio.wait_for(entered.wait(), DEADLINE_SECONDS)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await stop_runtime(runtime)
    assert await pending_count(redis, settings, "capture") == 2

    capture = capture_sink_plugin("capture", max_wait_seconds=0.05)
    async with running_worker(settings, (capture.plugin, capture.name)):
        await wait_until(lambda: group_caught_up(redis, settings, "capture"), "acks")
    assert Counter(delivered_ids(capture.batches)) == Counter(e.message_id for e in events)


# --- trimming --------------------------------------------------------------------------------------


async def add_entries(redis: aioredis.Redis, stream: str, count: int) -> list[bytes]:
    return [
        await redis.xadd(stream, {"v": "1", "n": 1, "d": event_list_encoder.encode(make_events(1))})
        for _ in range(count)
    ]


async def read_and_ack(
    redis: aioredis.Redis, stream: str, group: str, *, read: int, ack: int
) -> list[bytes]:
    reply = await redis.xreadgroup(group, f"{group}-consumer", {stream: ">"}, count=read)
    ids = [entry_id for entry_id, _ in reply[0][1]] if reply else []
    if ack:
        await redis.xack(stream, group, *ids[:ack])
    return ids


async def remaining(redis: aioredis.Redis, stream: str) -> list[bytes]:
    return [entry_id for entry_id, _ in await redis.xrange(stream)]


async def test_trim_keeps_what_the_slowest_group_has_not_acknowledged(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = stream_key(settings.key_prefix)
    ids = await add_entries(redis, stream, 10)
    await redis.xgroup_create(stream, "fast", id="0")
    await redis.xgroup_create(stream, "slow", id="0")
    await read_and_ack(redis, stream, "fast", read=10, ack=10)
    await read_and_ack(redis, stream, "slow", read=10, ack=4)

    # Both acknowledged the first 4; the slow group still has 6 pending.
    assert await trim_acknowledged(redis, stream) == 4
    assert await remaining(redis, stream) == ids[4:]
    assert await trim_acknowledged(redis, stream) == 0

    # Once the slow group acknowledges everything, everything can go.
    await redis.xack(stream, "slow", *ids[4:])
    assert await trim_acknowledged(redis, stream) == 6
    assert await remaining(redis, stream) == []


async def test_trim_keeps_what_a_group_has_not_read_yet(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = stream_key(settings.key_prefix)
    ids = await add_entries(redis, stream, 8)
    await redis.xgroup_create(stream, "fast", id="0")
    await redis.xgroup_create(stream, "slow", id="0")
    await read_and_ack(redis, stream, "fast", read=8, ack=8)
    # The slow group read and acknowledged 3; it has nothing pending but 5 left to read.
    await read_and_ack(redis, stream, "slow", read=3, ack=3)
    assert await trim_acknowledged(redis, stream) == 3
    assert await remaining(redis, stream) == ids[3:]
    # A group that has read nothing holds everything.
    await redis.xgroup_create(stream, "new", id="0")
    assert await trim_acknowledged(redis, stream) == 0
    assert await remaining(redis, stream) == ids[3:]


async def test_trim_without_groups_or_stream_does_nothing(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = stream_key(settings.key_prefix)
    assert await trim_acknowledged(redis, stream) == 0  # no stream at all
    await add_entries(redis, stream, 3)
    assert await trim_acknowledged(redis, stream) == 0
    assert await redis.xlen(stream) == 3


async def test_worker_trims_what_every_sink_acknowledged(
    settings: Settings, redis: aioredis.Redis
) -> None:
    one = capture_sink_plugin("one", max_wait_seconds=0.05)
    two = capture_sink_plugin("two", max_wait_seconds=0.05)
    stream = stream_key(settings.key_prefix)
    async with running_worker(
        settings, (one.plugin, one.name), (two.plugin, two.name), trim_interval=0.05
    ):
        async with event_buffer(redis, settings) as buffer:
            for _ in range(3):
                await buffer.append("src-1", make_events(2))
        await wait_until(lambda: len(delivered_ids(one.batches)) == 6, "deliveries to one")
        await wait_until(lambda: len(delivered_ids(two.batches)) == 6, "deliveries to two")

        async def trimmed() -> bool:
            return await redis.xlen(stream) == 0

        await wait_until(trimmed, "the worker to trim the stream")


# --- configuration -------------------------------------------------------------------------------


async def test_only_serves_the_named_sinks(settings: Settings, redis: aioredis.Redis) -> None:
    one = capture_sink_plugin("one", max_wait_seconds=0.05)
    two = capture_sink_plugin("two", max_wait_seconds=0.05)
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", make_events(2))
    async with running_worker(
        settings, (one.plugin, one.name), (two.plugin, two.name), only=["two"]
    ) as running:
        assert [sink.name for sink in running.worker.sinks] == ["two"]
        await wait_until(lambda: group_caught_up(redis, settings, "two"), "acks")
    groups = [g["name"] for g in await redis.xinfo_groups(stream_key(settings.key_prefix))]
    assert groups == [b"two"]
    assert one.batches == []


async def test_unknown_sink_name_is_a_config_error(settings: Settings) -> None:
    one = capture_sink_plugin("one")
    pm = build_plugin_manager(load_entry_points=False, extra_plugins=[(one.plugin, one.name)])
    runtime = await start_runtime(settings, "worker", pm=pm)
    try:
        with pytest.raises(PluginConfigError, match=r"'nope'.*registered sinks: one"):
            Worker(runtime, ["nope"])
    finally:
        await stop_runtime(runtime)


async def test_a_worker_without_sinks_idles_until_stopped(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="signalsmith.worker")
    async with running_worker(settings) as running:
        assert running.worker.sinks == []
        await asyncio.sleep(0.1)
        assert not running.task.done()
    assert "no sinks to deliver to" in caplog.text


# --- routing: the worker hands a sink only what it takes -------------------------------------------


def consenting(event: Event, **preferences: bool) -> Event:
    return msgspec.structs.replace(
        event, context={**event.context, "consent": {"categoryPreferences": preferences}}
    )


async def test_the_worker_routes_by_type_event_name_consent_and_integrations(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Each sink gets only the events its Routing takes; the rest are acknowledged for it and
    observers are told why each one was skipped."""
    now = datetime.now(UTC)
    order = make_events(1)[0]
    order = msgspec.structs.replace(order, event="Order Completed")
    signup = msgspec.structs.replace(make_events(1)[0], event="Signed Up")
    page = Page(message_id=message_id(), received_at=now, timestamp=now, project_id="src-1")
    declined = consenting(
        msgspec.structs.replace(make_events(1)[0], event="Order Refunded"), marketing=False
    )
    granted = consenting(
        msgspec.structs.replace(make_events(1)[0], event="Order Shipped"), marketing=True
    )
    empty_preferences = consenting(msgspec.structs.replace(make_events(1)[0], event="Order Lost"))
    switched_off = msgspec.structs.replace(
        make_events(1)[0], event="Order Paid", integrations={"All": False}
    )
    events = [order, signup, page, declined, granted, empty_preferences, switched_off]
    orders = capture_sink_plugin(
        "orders",
        routing=Routing(types=("track",), events=("Order *",)),
        max_wait_seconds=0.05,
    )
    marketing = capture_sink_plugin(
        "marketing", routing=Routing(consent=("marketing",)), max_wait_seconds=0.05
    )
    everything = capture_sink_plugin("everything", max_wait_seconds=0.05)
    observer = RecordingObserver()
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", events)
    async with running_worker(
        settings,
        (orders.plugin, orders.name),
        (marketing.plugin, marketing.name),
        (everything.plugin, everything.name),
        (observer, "observer"),
    ):
        for name in ("orders", "marketing", "everything"):
            await wait_until(lambda name=name: group_caught_up(redis, settings, name), name)

    def names(capture: Any) -> list[str]:
        return [getattr(e, "event", e.type) for batch in capture.batches for e in batch]

    # `integrations: {All: false}` switches destinations off (and no consent object means the
    # marketing category is not enforced on the others).
    assert names(orders) == ["Order Completed", "Order Refunded", "Order Shipped", "Order Lost"]
    assert names(marketing) == ["Order Completed", "Signed Up", "page", "Order Shipped"]
    assert names(everything) == [
        "Order Completed",
        "Signed Up",
        "page",
        "Order Refunded",
        "Order Shipped",
        "Order Lost",
    ]
    skipped = {(o.sink, o.message_id): o.reason for o in observer.outcomes if o.status == "skipped"}
    assert skipped[("orders", signup.message_id)] == (
        "routing: orders does not take event 'Signed Up'"
    )
    assert skipped[("orders", page.message_id)] == "routing: orders takes track, not page"
    assert skipped[("marketing", declined.message_id)] == "consent: marketing not granted"
    assert skipped[("marketing", empty_preferences.message_id)] == (
        "consent: marketing not granted"
    )
    assert skipped[("everything", switched_off.message_id)] == (
        "integrations: everything switched off by the event"
    )
    assert len(skipped) == 3 + 3 + 1
    assert all(o.event is not None for o in observer.outcomes)


# --- per-event results: one bad event does not fail its batch --------------------------------------


async def test_a_delivery_report_retries_and_dead_letters_only_the_events_it_names(
    settings: Settings, redis: aioredis.Redis
) -> None:
    events = make_events(5)
    bad, flaky, fine = events[1], events[3], [events[0], events[2], events[4]]
    attempts: list[list[str]] = []

    def deliver(batch: list[Event]) -> DeliveryReport:
        attempts.append([e.message_id for e in batch])
        if len(attempts) == 1:
            return DeliveryReport(
                rejected={bad.message_id: "HTTP 400: email is not valid"},
                retry={flaky.message_id: "HTTP 503"},
            )
        return DeliveryReport()

    sink = capture_sink_plugin("crm", deliver=deliver, max_wait_seconds=0.05)
    observer = RecordingObserver()
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", events)
    async with running_worker(settings, (sink.plugin, sink.name), (observer, "observer")):
        await wait_until(lambda: group_caught_up(redis, settings, "crm"), "acks")

    # The retry carries only the event the sink asked to retry.
    assert attempts == [[e.message_id for e in events], [flaky.message_id]]
    [letter] = await dead_letters(redis, settings, "crm")
    assert dead_lettered_ids([letter]) == [bad.message_id]
    assert msgspec.msgpack.decode(letter["errors"]) == {
        bad.message_id: "HTTP 400: email is not valid"
    }
    assert letter["error"] == b"1 events rejected by the sink"
    delivered = [o.message_id for o in observer.of("delivered", "crm")]
    assert sorted(delivered) == sorted([e.message_id for e in fine] + [flaky.message_id])
    [retried] = observer.of("retried", "crm")
    assert retried.message_id == flaky.message_id
    [dead] = observer.of("dead_lettered", "crm")
    assert (dead.message_id, dead.reason) == (bad.message_id, "HTTP 400: email is not valid")
    assert await pending_count(redis, settings, "crm") == 0


async def test_events_a_report_keeps_asking_to_retry_are_dead_lettered_after_max_attempts(
    settings: Settings, redis: aioredis.Redis
) -> None:
    events = make_events(3)
    stubborn = events[0]

    def deliver(batch: list[Event]) -> DeliveryReport:
        return DeliveryReport(retry={stubborn.message_id: "HTTP 429"}, retry_after=0)

    sink = capture_sink_plugin("crm", deliver=deliver, max_attempts=3, max_wait_seconds=0.05)
    async with event_buffer(redis, settings) as buffer:
        await buffer.append("src-1", events)
    async with running_worker(settings, (sink.plugin, sink.name)):
        await wait_until(lambda: group_caught_up(redis, settings, "crm"), "acks")

    assert [len(batch) for batch in sink.batches] == [3, 1, 1]
    [letter] = await dead_letters(redis, settings, "crm")
    assert dead_lettered_ids([letter]) == [stubborn.message_id]
    assert int(letter["attempts"]) == 3
    reasons = msgspec.msgpack.decode(letter["errors"])
    # Each event keeps its own last reason, as the sink gave it.
    assert reasons == {stubborn.message_id: "HTTP 429"}


# --- consent categories a workspace section gives a plugin-registered sink -----------------------


class LakeWarehouse:
    """A warehouse sink ``lake`` that records what it is handed."""

    def __init__(self) -> None:
        self.written: list[Event] = []

    @hookimpl
    def register_warehouses(self, register: Callable[[Sink], None]) -> None:
        register(Sink(name="lake", kind="warehouse", max_wait_seconds=0.05))

    @hookimpl
    def write_events(self, warehouse: Sink, events: list[Event]) -> None:
        self.written += events


class SinkCategories:
    """A plugin owning a ``needs:`` section: the categories each plugin-registered sink needs."""

    @hookimpl
    def register_workspace_sections(self, register: Callable[[WorkspaceSection], None]) -> None:
        register(
            WorkspaceSection(
                name="needs",
                settings=dict[str, tuple[str, ...]],
                sink_consent=lambda document: document.sections.get("needs") or {},
            )
        )


async def test_a_workspace_section_gives_a_warehouse_the_consent_categories_it_needs(
    settings: Settings,
) -> None:
    """The warehouse is refused what the event's consent does not grant, from the version that
    says so on, and takes everything again from the version that stops saying so."""
    lake = LakeWarehouse()
    plugins = ((lake, "lake"), (SinkCategories(), "needs"))
    with_needs = "version: 1\nsources: {web: {}}\nneeds: {lake: [analytics]}\n"

    def message(name: str, **preferences: bool) -> dict[str, Any]:
        consent = {"consent": {"categoryPreferences": preferences}} if preferences else {}
        return {"type": "track", "event": name, "userId": "u-1", "context": consent}

    async with forwarding(settings, *plugins, document=with_needs) as run:
        await run.send(
            message("Declined", analytics=False),
            message("Granted", analytics=True),
            message("Silent"),
        )
        await run.wait_settled("lake")
        assert [e.event for e in lake.written] == ["Granted", "Silent"]  # type: ignore[union-attr]
        await run.apply("version: 1\nsources: {web: {}}\n")
        await run.send(message("Declined again", analytics=False))
        await run.wait_settled("lake")
    assert [e.event for e in lake.written][-1] == "Declined again"  # type: ignore[union-attr]
