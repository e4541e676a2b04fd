"""The live feed: a viewer's records, read from the per-source streams, over Server-Sent Events.

Any process can serve it: everything comes from Redis. Each viewer has a reader task that reads
the streams of the sources it may see (and asked for), applies its filters, and keeps what
matches in a bounded buffer; the HTTP response takes from the buffer as fast as the viewer
reads. A viewer who reads slowly or not at all never holds anything up: once its buffer is full,
new matching records are skipped and counted, and the viewer is told how many. The chart's
counts (events, violations, failures per second per source) come from each entry's counts, so
they cover everything the viewer may see whatever the other filters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.response import ServerSentEventMessage
from redis.exceptions import RedisError

from signalsmith_debugger.access import Viewer
from signalsmith_debugger.config import DebuggerConfig
from signalsmith_debugger.records import Record, entry_decoder, view
from signalsmith_debugger.store import DebuggerKeys, TraceReader, entry_keys, unframe

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("signalsmith.debugger")

# Records sent in one SSE message at most.
SEND_BATCH = 200
# Live stream entries read per stream per XREAD, and how long a read waits for new ones.
READ_COUNT = 50
READ_BLOCK_MS = 1000
# How often the list of sources is read again (new sources join the feed).
SOURCES_EVERY_SECONDS = 2.0
# How often a debugger token is checked again (revoked: the feed ends).
RECHECK_EVERY_SECONDS = 15.0
# The backfill that starts a feed reads each stream back this many entries at a time, until it
# has this many outcomes per record asked for, or this many pages.
BACKFILL_PAGE_ENTRIES = 50
BACKFILL_OUTCOMES_PER_RECORD = 10
BACKFILL_PAGES = 10
# MessageIds a filter follows (their later records pass too), at most.
MAX_FOLLOWED = 10_000

_json = msgspec.json.Encoder()


class LiveFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What a viewer asked to see. Every filter that is set must hold."""

    sources: frozenset[str] | None = None
    types: frozenset[str] = frozenset()
    # An event (or page/screen) name: a case-insensitive substring, or a shell pattern when it
    # holds * ? or [.
    event: str | None = None
    # A userId or anonymousId, exactly.
    user: str | None = None
    # Outcome statuses (from the filter names rejected, violated, dropped, failed): an event
    # with one of them, and every later record of that event.
    statuses: frozenset[str] = frozenset()

    def event_matches(self, name: str | None) -> bool:
        pattern = self.event
        if not pattern:
            return True
        if name is None:
            return False
        if any(mark in pattern for mark in "*?["):
            return fnmatchcase(name.lower(), pattern.lower())
        return pattern.lower() in name.lower()


class Feed:
    """One viewer's reader and buffer."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: DebuggerKeys,
        config: DebuggerConfig,
        viewer: Viewer,
        wanted: LiveFilter,
        *,
        backfill: int = 100,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.viewer = viewer
        self.filter = wanted
        self.backfill = backfill
        self.traces = TraceReader(redis, keys, config)
        self.buffer: deque[Record] = deque()
        self.skipped = 0
        self.reported_skipped = 0
        self.counts: dict[str, list[int]] = {}
        self.streams: dict[str, str] = {}
        self.ready = asyncio.Event()
        # MessageIds whose records all pass from now on, and whether a messageId's summary
        # matched the filters (both bounded).
        self._followed: OrderedDict[str, bool] = OrderedDict()
        self._known: OrderedDict[str, bool] = OrderedDict()
        self._sources_at = 0.0

    # -- what matches --

    def matches(self, record: Record) -> bool:
        """Whether the viewer asked for this record.

        Only the records that first show an event carry its summary (type, name, user); the
        others (buffered, delivered, ...) pass when an earlier record of their messageId did.
        """
        wanted = self.filter
        by_summary = bool(wanted.types or wanted.event or wanted.user)
        if not by_summary and not wanted.statuses:
            return True
        message_id = record.message_id
        if message_id is not None and message_id in self._followed:
            return True
        if by_summary:
            if _has_summary(record):
                fits = (
                    (not wanted.types or record.type in wanted.types)
                    and wanted.event_matches(record.event)
                    and (not wanted.user or wanted.user in (record.user_id, record.anonymous_id))
                )
                if message_id is not None:
                    _remember(self._known, message_id, fits)
                if not fits:
                    return False
            elif message_id is None or not self._known.get(message_id):
                return False
        if wanted.statuses and record.status not in wanted.statuses:
            return False
        if message_id is not None:
            _remember(self._followed, message_id, True)
        return True

    def offer(self, records: list[Record]) -> None:
        """Keep what matches, as far as the buffer allows; count the rest as skipped."""
        room = self.config.viewer_buffer - len(self.buffer)
        added = False
        for record in records:
            if not self.matches(record):
                continue
            if room <= 0:
                self.skipped += 1
                continue
            self.buffer.append(record)
            room -= 1
            added = True
        if added:
            self.ready.set()

    async def _recent_entries(self, key: str) -> list[tuple[str, dict[bytes, bytes]]]:
        """A stream's newest entries, enough for the backfill: back until they hold
        ``BACKFILL_OUTCOMES_PER_RECORD`` outcomes per record asked for (filters keep some), or
        ``BACKFILL_PAGES`` pages were read."""
        wanted = self.backfill * BACKFILL_OUTCOMES_PER_RECORD
        found: list[tuple[str, dict[bytes, bytes]]] = []
        outcomes = 0
        end = "+"
        for _ in range(BACKFILL_PAGES):
            page = await self.redis.xrevrange(key, max=end, count=BACKFILL_PAGE_ENTRIES)
            if not page:
                break
            for entry_id, fields in page:
                found.append((_text(entry_id), fields))
                outcomes += int(fields.get(b"n", 0))
            if outcomes >= wanted or len(page) < BACKFILL_PAGE_ENTRIES:
                break
            end = "(" + _text(page[-1][0])
        return found

    async def records_of(self, fields: dict[bytes, bytes]) -> list[Record]:
        """The records of a live stream entry: its entries in the trace slice (read now), and
        those it holds itself, expanded."""
        entries = [entry_decoder.decode(blob) for blob in unframe(fields.get(b"x", b""))]
        if b"k" in fields:
            entries += await self.traces.entries(_text(fields[b"s"]), entry_keys(fields[b"k"]))
        records = [record for entry in entries for record in entry.records()]
        records.sort(key=lambda record: record.at)
        return records

    def take(self, limit: int = SEND_BATCH) -> list[Record]:
        taken = [self.buffer.popleft() for _ in range(min(limit, len(self.buffer)))]
        if not self.buffer:
            self.ready.clear()
        return taken

    # -- reading the streams --

    async def sources(self) -> list[str]:
        """The sources this feed reads: those asked for, or every one the viewer may see."""
        wanted = self.filter.sources
        if wanted is not None:
            return sorted(source for source in wanted if self.viewer.may_see(source))
        known = await self.redis.hkeys(self.keys.sources)
        names = [name.decode() if isinstance(name, bytes) else name for name in known]
        return sorted(self.viewer.visible(names))

    async def start(self) -> list[Record]:
        """Join the streams; return the newest matching records already there (the backfill)."""
        entries: list[tuple[str, dict[bytes, bytes]]] = []
        for source in await self.sources():
            key = self.keys.live(source)
            newest = await self.redis.xrevrange(key, count=1)
            # From the newest entry on; a stream not there yet holds only what comes later.
            self.streams[key] = _text(newest[0][0]) if newest else "0-0"
            if self.backfill and newest:
                entries += await self._recent_entries(key)
        self._sources_at = time.monotonic()
        if not entries:
            return []
        # In the order they happened, so that a record brings the later ones of its event.
        entries.sort(key=lambda entry: _stream_order(entry[0]))
        recent: list[Record] = []
        for _, fields in entries:
            recent += [r for r in await self.records_of(fields) if self.matches(r)]
        return recent[-self.backfill :] if self.backfill else []

    async def run(self) -> None:
        """Read until cancelled; a Redis error is waited out, not fatal."""
        while True:
            try:
                await self.read_once()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                log.warning("debugger: live feed cannot read Redis: %s", error)
                await asyncio.sleep(1.0)

    async def read_once(self) -> None:
        """One read of the streams (waits up to a second for new entries)."""
        if time.monotonic() - self._sources_at > SOURCES_EVERY_SECONDS:
            self._sources_at = time.monotonic()
            for source in await self.sources():
                # A source that appears later: its stream began after this feed did.
                self.streams.setdefault(self.keys.live(source), "0-0")
        if not self.streams:
            await asyncio.sleep(SOURCES_EVERY_SECONDS)
            return
        reply = await self.redis.xread(self.streams, count=READ_COUNT, block=READ_BLOCK_MS)
        for stream, entries in reply or []:
            key = _text(stream)
            source = key[len(self.keys.live_prefix) :]
            counts = self.counts.setdefault(source, [0, 0, 0])
            for entry_id, fields in entries:
                self.streams[key] = _text(entry_id)
                counts[0] += int(fields.get(b"e", 0))
                counts[1] += int(fields.get(b"v", 0))
                counts[2] += int(fields.get(b"f", 0))
                self.offer(await self.records_of(fields))

    def take_counts(self) -> dict[str, dict[str, int]]:
        counts = {
            source: {"events": e, "violations": v, "failures": f}
            for source, (e, v, f) in self.counts.items()
        }
        for source in self.counts:
            self.counts[source] = [0, 0, 0]
        for key in self.streams:  # a source with nothing this second still gets its zero
            counts.setdefault(
                key[len(self.keys.live_prefix) :], {"events": 0, "violations": 0, "failures": 0}
            )
        return counts


class Hub:
    """The feeds this process serves (bounded), for the viewers listing."""

    def __init__(self, config: DebuggerConfig) -> None:
        self.config = config
        self.feeds: set[Feed] = set()

    def full(self) -> bool:
        return len(self.feeds) >= self.config.max_viewers


async def serve_feed(
    hub: Hub,
    feed: Feed,
    still_allowed: Any,
) -> AsyncIterator[ServerSentEventMessage]:
    """The SSE messages of one feed, until the viewer leaves (or its token is revoked)."""
    hub.feeds.add(feed)
    reader: asyncio.Task[None] | None = None
    try:
        backfill = await feed.start()
        yield _message(
            "hello",
            {
                "viewer": feed.viewer.name,
                "sources": sorted(key[len(feed.keys.live_prefix) :] for key in feed.streams),
                "allSources": feed.viewer.sources is None,
                "viewerBuffer": feed.config.viewer_buffer,
            },
        )
        if backfill:
            yield _records(backfill)
        reader = asyncio.create_task(feed.run(), name="debugger-live-reader")
        next_counts = time.monotonic() + 1.0
        next_check = time.monotonic() + RECHECK_EVERY_SECONDS
        while True:
            wait = max(0.0, next_counts - time.monotonic())
            if not feed.buffer:
                try:
                    await asyncio.wait_for(feed.ready.wait(), timeout=wait)
                except TimeoutError:
                    pass
            taken = feed.take()
            if taken:
                yield _records(taken)
            if feed.skipped != feed.reported_skipped:
                yield _message(
                    "skipped",
                    {"skipped": feed.skipped - feed.reported_skipped, "total": feed.skipped},
                )
                feed.reported_skipped = feed.skipped
            now = time.monotonic()
            if now >= next_counts:
                next_counts = now + 1.0
                yield _message(
                    "stats",
                    {"at": datetime.now(UTC).isoformat(), "sources": feed.take_counts()},
                )
            if now >= next_check:
                next_check = now + RECHECK_EVERY_SECONDS
                if not await still_allowed():
                    yield _message("end", {"reason": "this token was revoked or has expired"})
                    return
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
    finally:
        hub.feeds.discard(feed)
        if reader is not None:
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass


def _has_summary(record: Record) -> bool:
    return (
        record.type is not None
        or record.event is not None
        or record.user_id is not None
        or record.anonymous_id is not None
    )


def _remember(seen: OrderedDict[str, bool], message_id: str, value: bool) -> None:
    seen[message_id] = value
    if len(seen) > MAX_FOLLOWED:
        seen.popitem(last=False)


def _records(records: list[Record]) -> ServerSentEventMessage:
    # Events stay in their traces (the page asks for one when it opens it); a message without
    # a messageId has no trace, so what it held comes along.
    views = [view(record, with_payload=record.message_id is None) for record in records]
    return ServerSentEventMessage(event="records", data=_json.encode(views).decode())


def _message(event: str, data: Any) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=event, data=_json.encode(data).decode())


def _stream_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
