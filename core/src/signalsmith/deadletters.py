"""Dead letters: listing, showing, replaying and dropping what a sink gave up on.

What `signalsmith dlq` and the admin API's ``/dlq`` endpoints do. A sink's dead letters are the
entries of ``P:dlq:<sink>`` (``signalsmith.stream.DeadLetter``), each one batch of events given
up on with its reasons. A query selects events in them by the time they failed, their name and
their reason; an entry can be selected in part.

A replay moves the selected events to the sink's replay stream ``P:replay:<sink>`` (the
entry format of ``P:events``, each event keeping its ``messageId``), which only that sink's
consumer group reads, so a replay reaches that sink and no other. In the same transaction the
events leave the dead-letter stream (an entry replayed in part is written back with what is
left), so running a replay twice never sends an event twice from here; the sink's retry window
starts again from the replay, and what fails again is dead-lettered again. The worker delivers
a replay at the rate it asked for (events per second, across all workers).
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from signalsmith.model import Event, event_list_decoder, event_list_encoder, to_segment_dict
from signalsmith.stream import (
    FORMAT_VERSION,
    dead_letter_key,
    parse_id,
    replay_key,
    text,
)

# Events per replay stream entry: a worker never splits an entry, so this bounds how far a
# paced replay can run ahead of its rate.
REPLAY_ENTRY_EVENTS = 100
DEFAULT_REPLAY_RATE = 500.0
_SCAN_COUNT = 500
# Fields of a dead-letter entry that describe the failure (the rest are the events).
_LETTER_FIELDS = ("sink", "error", "errors", "attempts", "entry_ids", "failed_at", "origin")


class LetterQuery(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which dead-lettered events: failed within [``since``, ``until``], named like ``event``
    (shell-style; a track's event name, a page's or screen's name, else the message type), with
    ``error`` in their reason (case-insensitive), in the entries ``ids`` (all when empty)."""

    since: datetime | None = None
    until: datetime | None = None
    event: str | None = None
    error: str | None = None
    ids: tuple[str, ...] = ()

    @property
    def selects_events(self) -> bool:
        return self.event is not None or self.error is not None


class LetterEvent(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    type: str
    name: str | None
    received_at: str
    reason: str


class Letter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One dead-letter entry as listed: what failed, when, why, and (``show``) its events."""

    id: str
    sink: str
    failed_at: str
    count: int
    error: str
    attempts: int
    origin: str = "events"
    entry_ids: list[str] = []
    # An entry the worker could not decode: kept as written, replayable, not readable here.
    undecodable: bool = False
    events: list[LetterEvent] = []
    # ``show`` only: each event as Segment spells it.
    payloads: list[dict[str, Any]] = []


class SinkLetters(msgspec.Struct, frozen=True, kw_only=True):
    sink: str
    entries: int
    events: int
    oldest: str | None
    newest: str | None


class Moved(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay or a drop took out of the dead letters; ``replay_entries`` are the replay
    stream's entries (id and event count), for following the replay."""

    entries: int
    events: int
    replay_entries: list[tuple[str, int]] = []


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far the worker got with the entries of a replay: events settled (delivered,
    skipped by the routing, or dead-lettered again) of the total."""

    settled: int
    total: int

    @property
    def done(self) -> bool:
        return self.settled >= self.total


# --- reading entries ------------------------------------------------------------------------------


class _Entry:
    """A raw dead-letter entry and its decoded events (None when undecodable)."""

    __slots__ = ("events", "fields", "id")

    def __init__(self, entry_id: str, fields: dict[str, Any]) -> None:
        self.id = entry_id
        self.fields = fields
        self.events: list[Event] | None = None
        # An entry the worker could not decode is kept as it was written (with its `src`).
        if "src" in fields or text(fields.get("v", b"")) != FORMAT_VERSION.decode():
            return
        try:
            self.events = event_list_decoder.decode(fields.get("d", b""))
        except (msgspec.DecodeError, TypeError):
            self.events = None

    @property
    def error(self) -> str:
        return text(self.fields.get("error", b""))

    @property
    def reasons(self) -> dict[str, str]:
        raw = self.fields.get("errors")
        if not raw:
            return {}
        try:
            return msgspec.msgpack.decode(raw, type=dict[str, str])
        except msgspec.DecodeError:
            return {}

    @property
    def failed_at(self) -> str:
        return text(self.fields.get("failed_at", b""))

    def failed_time(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.failed_at.replace("Z", "+00:00"))
        except ValueError:
            return None

    def reason_of(self, event: Event, reasons: dict[str, str]) -> str:
        return reasons.get(event.message_id, self.error)


def event_name(event: Event) -> str:
    """The name ``--event`` patterns match: a track's event, a page's or screen's name, else
    the message type."""
    name = getattr(event, "event", None) or getattr(event, "name", None)
    return name if isinstance(name, str) and name else event.type


def _fields_of(raw: dict[Any, Any]) -> dict[str, Any]:
    return {text(key): value for key, value in raw.items()}


async def _entries(redis: aioredis.Redis, key: str, query: LetterQuery) -> AsyncIterator[_Entry]:
    """The entries of ``key`` the query's ids and times select, oldest first."""
    if query.ids:
        for entry_id in query.ids:
            found = await redis.xrange(key, entry_id, entry_id)
            for raw_id, raw in found:
                entry = _Entry(text(raw_id), _fields_of(raw))
                if _in_time(entry, query):
                    yield entry
        return
    start = "-"
    while True:
        page = await redis.xrange(key, start, "+", count=_SCAN_COUNT)
        for raw_id, raw in page:
            entry = _Entry(text(raw_id), _fields_of(raw))
            if _in_time(entry, query):
                yield entry
        if len(page) < _SCAN_COUNT:
            return
        start = "(" + text(page[-1][0])


def _in_time(entry: _Entry, query: LetterQuery) -> bool:
    if query.since is None and query.until is None:
        return True
    failed = entry.failed_time()
    if failed is None:
        return False
    if query.since is not None and failed < query.since:
        return False
    return query.until is None or failed <= query.until


def _selected(entry: _Entry, query: LetterQuery) -> list[Event] | None:
    """The events of ``entry`` the query selects (None: an undecodable entry, selected whole
    when the query does not look at events)."""
    if entry.events is None:
        return None
    if not query.selects_events:
        return entry.events
    pattern = re.compile(fnmatch.translate(query.event)) if query.event is not None else None
    needle = query.error.lower() if query.error is not None else None
    reasons = entry.reasons
    return [
        event
        for event in entry.events
        if (pattern is None or pattern.fullmatch(event_name(event)))
        and (needle is None or needle in entry.reason_of(event, reasons).lower())
    ]


def _letter(entry: _Entry, sink: str, events: list[Event] | None, *, payloads: bool) -> Letter:
    reasons = entry.reasons
    shown = events if events is not None else []
    return Letter(
        id=entry.id,
        sink=text(entry.fields.get("sink", sink.encode())),
        failed_at=entry.failed_at,
        count=len(shown) if events is not None else int(entry.fields.get("n", 0) or 0),
        error=entry.error,
        attempts=int(entry.fields.get("attempts", 0) or 0),
        origin=text(entry.fields.get("origin", b"events")),
        entry_ids=[i for i in text(entry.fields.get("entry_ids", b"")).split(",") if i],
        undecodable=entry.events is None,
        events=[
            LetterEvent(
                message_id=event.message_id,
                type=event.type,
                name=getattr(event, "event", None) or getattr(event, "name", None),
                received_at=event.received_at.isoformat().replace("+00:00", "Z"),
                reason=entry.reason_of(event, reasons),
            )
            for event in shown
        ],
        payloads=[to_segment_dict(event) for event in shown] if payloads else [],
    )


# --- the operations -------------------------------------------------------------------------------


async def sinks_with_letters(redis: aioredis.Redis, prefix: str) -> list[SinkLetters]:
    """Every sink with a dead-letter stream: its entries and events, oldest and newest."""
    found = []
    marker = f"{prefix}:dlq:"
    async for raw_key in redis.scan_iter(match=f"{marker}*", count=1000, _type="stream"):
        key = text(raw_key)
        sink = key[len(marker) :]
        entries = events = 0
        oldest = newest = None
        async for entry in _entries(redis, key, LetterQuery()):
            entries += 1
            events += int(entry.fields.get("n", 0) or 0)
            oldest = oldest or entry.failed_at
            newest = entry.failed_at
        found.append(
            SinkLetters(sink=sink, entries=entries, events=events, oldest=oldest, newest=newest)
        )
    return sorted(found, key=lambda item: item.sink)


async def list_letters(
    redis: aioredis.Redis,
    prefix: str,
    sink: str,
    query: LetterQuery = LetterQuery(),
    *,
    limit: int = 100,
    events: bool = False,
) -> list[Letter]:
    """The entries of ``sink``'s dead letters the query selects (oldest first, at most
    ``limit``), counting only their selected events; ``events`` lists each one."""
    letters: list[Letter] = []
    async for entry in _entries(redis, dead_letter_key(prefix, sink), query):
        selected = _selected(entry, query)
        if selected is not None and not selected:
            continue
        if selected is None and query.selects_events:
            continue
        letter = _letter(entry, sink, selected, payloads=False)
        letters.append(letter if events else msgspec.structs.replace(letter, events=[]))
        if len(letters) >= limit:
            break
    return letters


async def get_letter(redis: aioredis.Redis, prefix: str, sink: str, entry_id: str) -> Letter | None:
    """One entry with every event, its reason and its payload; None when there is none."""
    try:
        found = await redis.xrange(dead_letter_key(prefix, sink), entry_id, entry_id)
    except ResponseError:  # not an entry id
        return None
    if not found:
        return None
    raw_id, raw = found[0]
    entry = _Entry(text(raw_id), _fields_of(raw))
    return _letter(entry, sink, entry.events, payloads=True)


async def ensure_replay_group(redis: aioredis.Redis, prefix: str, sink: str) -> None:
    """Create the sink's group on its replay stream (from the start) if there is none, so
    nothing replayed before a worker starts is missed."""
    try:
        await redis.xgroup_create(replay_key(prefix, sink), sink, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def replay_letters(
    redis: aioredis.Redis,
    prefix: str,
    sink: str,
    query: LetterQuery = LetterQuery(),
    *,
    rate: float | None = DEFAULT_REPLAY_RATE,
    keep: bool = False,
) -> Moved:
    """Move the selected events to ``sink``'s replay stream (module docstring); ``rate`` is the
    events per second the worker may deliver them at (None: no limit); ``keep`` leaves them in
    the dead letters too."""
    letters_key = dead_letter_key(prefix, sink)
    stream = replay_key(prefix, sink)
    replayed_at = str(int(time.time() * 1000))
    pace = str(rate if rate and rate > 0 else 0)
    # An entry is never split by the worker: at most a second's worth of the rate in each.
    chunk_size = max(1, min(REPLAY_ENTRY_EVENTS, int(rate))) if rate else REPLAY_ENTRY_EVENTS
    entries = events = 0
    added: list[tuple[str, int]] = []
    async for entry in _entries(redis, letters_key, query):
        selected = _selected(entry, query)
        if selected is not None and not selected:
            continue
        if selected is None and query.selects_events:
            continue
        if not added:
            await ensure_replay_group(redis, prefix, sink)
        async with redis.pipeline(transaction=True) as pipe:
            if selected is None:  # undecodable: as written, for a newer reader
                original = {k: v for k, v in entry.fields.items() if k not in _LETTER_FIELDS}
                pipe.xadd(stream, {**original, "replayed_at": replayed_at, "rate": pace})
                counts = [int(entry.fields.get("n", 0) or 0)]
            else:
                counts = []
                for start in range(0, len(selected), chunk_size):
                    chunk = selected[start : start + chunk_size]
                    source = chunk[0].project_id if chunk else ""
                    pipe.xadd(
                        stream,
                        {
                            "v": FORMAT_VERSION,
                            "src": source,
                            "n": len(chunk),
                            "d": event_list_encoder.encode(chunk),
                            "replayed_at": replayed_at,
                            "rate": pace,
                            "letter": entry.id,
                        },
                    )
                    counts.append(len(chunk))
            if not keep:
                pipe.xdel(letters_key, entry.id)
                if selected is not None and len(selected) < len(entry.events or []):
                    pipe.xadd(letters_key, _rest_of(entry, selected))
            replies = await pipe.execute()
        added += [(text(reply), count) for reply, count in zip(replies, counts, strict=False)]
        entries += 1
        events += sum(counts)
    return Moved(entries=entries, events=events, replay_entries=added)


def _rest_of(entry: _Entry, taken: list[Event]) -> dict[str, Any]:
    """The fields of ``entry`` without the events ``taken`` from it."""
    gone = {event.message_id for event in taken}
    rest = [event for event in entry.events or [] if event.message_id not in gone]
    fields = dict(entry.fields)
    fields["n"] = len(rest)
    fields["d"] = event_list_encoder.encode(rest)
    reasons = {mid: reason for mid, reason in entry.reasons.items() if mid not in gone}
    if reasons:
        fields["errors"] = msgspec.msgpack.encode(reasons)
    else:
        fields.pop("errors", None)
    return fields


async def drop_letters(
    redis: aioredis.Redis, prefix: str, sink: str, query: LetterQuery = LetterQuery()
) -> Moved:
    """Delete the selected events from ``sink``'s dead letters (for good)."""
    letters_key = dead_letter_key(prefix, sink)
    entries = events = 0
    async for entry in _entries(redis, letters_key, query):
        selected = _selected(entry, query)
        if selected is not None and not selected:
            continue
        if selected is None and query.selects_events:
            continue
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xdel(letters_key, entry.id)
            if selected is not None and len(selected) < len(entry.events or []):
                pipe.xadd(letters_key, _rest_of(entry, selected))
            await pipe.execute()
        entries += 1
        events += len(selected) if selected is not None else int(entry.fields.get("n", 0) or 0)
    return Moved(entries=entries, events=events)


async def replay_progress(
    redis: aioredis.Redis, prefix: str, sink: str, replayed: Sequence[tuple[str, int]]
) -> ReplayProgress:
    """How many events of the replay entries ``replayed`` the sink's group has settled: read
    (up to its last-delivered id) and acknowledged."""
    total = sum(count for _, count in replayed)
    if not replayed:
        return ReplayProgress(settled=0, total=0)
    stream = replay_key(prefix, sink)
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return ReplayProgress(settled=0, total=total)
    last = None
    for raw in groups:
        group = _fields_of(raw)
        if text(group["name"]) == sink:
            last = parse_id(group["last-delivered-id"])
    if last is None:
        return ReplayProgress(settled=0, total=total)
    ordered = sorted(replayed, key=lambda item: parse_id(item[0]))
    pending_rows = await redis.xpending_range(
        stream, sink, min=ordered[0][0], max=ordered[-1][0], count=len(ordered)
    )
    pending = {text(row["message_id"]) for row in pending_rows}
    settled = sum(
        count
        for entry_id, count in ordered
        if parse_id(entry_id) <= last and entry_id not in pending
    )
    return ReplayProgress(settled=settled, total=total)


async def replay_backlog(redis: aioredis.Redis, prefix: str, sink: str) -> dict[str, int]:
    """The sink's replay stream: entries not yet read by its group, and read but not settled."""
    stream = replay_key(prefix, sink)
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return {"waiting": 0, "pending": 0}
    for raw in groups:
        group = _fields_of(raw)
        if text(group["name"]) == sink:
            lag = group.get("lag")
            waiting = int(lag) if lag is not None else await _unread(redis, stream, group)
            return {"waiting": waiting, "pending": int(group.get("pending") or 0)}
    return {"waiting": int(await redis.xlen(stream)), "pending": 0}


async def _unread(redis: aioredis.Redis, stream: str, group: dict[str, Any]) -> int:
    last = text(group["last-delivered-id"])
    return len(await redis.xrange(stream, f"({last}" if last != "0-0" else "-", "+"))


def parse_moment(value: str, *, now: datetime | None = None) -> datetime:
    """``2026-12-01T10:00:00Z``, ``2026-12-01``, or a time ago: ``90s``, ``30m``, ``2h``,
    ``7d``. Raises ValueError saying what is accepted."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        return datetime.fromtimestamp(now.timestamp() - seconds, UTC)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: write ISO-8601 (2026-12-01T10:00:00Z) or a time ago "
            "(90s, 30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


__all__ = [
    "DEFAULT_REPLAY_RATE",
    "Letter",
    "LetterEvent",
    "LetterQuery",
    "Moved",
    "ReplayProgress",
    "SinkLetters",
    "drop_letters",
    "ensure_replay_group",
    "event_name",
    "get_letter",
    "list_letters",
    "parse_moment",
    "replay_backlog",
    "replay_letters",
    "replay_progress",
    "sinks_with_letters",
]
