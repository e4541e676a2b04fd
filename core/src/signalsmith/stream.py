"""The events stream: its keys, its entry format, consumer groups, trimming and dead letters.

Layout (``P`` is ``Settings.key_prefix``; `docs/buffer.md` has the measurements behind it):

- ``P:events``: the stream. One entry per request (not per event), with fields ``v`` (format),
  ``src`` (source id), ``n`` (event count), ``d`` (msgpack list of events) and, when some events
  were duplicates, ``dup`` (their indexes in ``d``, comma-separated; consumers skip them).
- one consumer group per sink on ``P:events``, named after the sink.
- ``P:dlq:<sink>``: a sink's dead-letter stream (``DeadLetter`` says what an entry holds).
- ``P:replay:<sink>``: events replayed from a sink's dead letters, in the entry format of
  ``P:events`` plus ``replayed_at`` and ``rate``, read by that sink's own group alone
  (`signalsmith.deadletters`), so a replay reaches that sink and no other.

The collector writes entries (``signalsmith.buffer``, which adds ``dup``) and the worker reads
them (``signalsmith.worker``); both go through this module, so the format has one encoder
(``entry_fields``) and one decoder (``decode_entry``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from signalsmith.model import Event, encode_events, event_list_decoder

FORMAT_VERSION = b"1"

# Removes a consumer from a group only if it has nothing pending, atomically: a consumer that
# reads between our look at it and the removal keeps its entries.
# KEYS[1] stream; ARGV: group, consumer. Returns -1 when the consumer has pending entries.
FORGET_CONSUMER_SCRIPT = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


def stream_key(prefix: str) -> str:
    return f"{prefix}:events"


def dead_letter_key(prefix: str, sink_name: str) -> str:
    return f"{prefix}:dlq:{sink_name}"


def replay_key(prefix: str, sink_name: str) -> str:
    return f"{prefix}:replay:{sink_name}"


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_id(value: Any) -> tuple[int, int]:
    milliseconds, _, sequence = text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


def format_id(stream_id: tuple[int, int]) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def id_after(stream_id: tuple[int, int]) -> tuple[int, int]:
    milliseconds, sequence = stream_id
    if sequence >= 2**64 - 1:
        return milliseconds + 1, 0
    return milliseconds, sequence + 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the entry format -------------------------------------------------------------------------


def entry_fields(source_id: str, events: Sequence[Event]) -> list[bytes]:
    """An entry's fields as ``[name, value, ...]``: what the append script writes (it adds
    ``dup``). Raises ``msgspec.EncodeError`` for an event msgpack cannot hold."""
    # Names as bytes: redis-py sends bytes as they are, while each str or int argument costs
    # it a few checks and an encoding, on every request.
    return [
        b"v",
        FORMAT_VERSION,
        b"src",
        source_id.encode(),
        b"n",
        b"%d" % len(events),
        b"d",
        encode_events(events),
    ]


@dataclass(slots=True)
class StreamEntry:
    """One entry as a reader holds it: the events to deliver, or why there are none.

    ``events`` excludes the duplicates listed in ``dup`` (their indexes are in ``duplicates``).
    An entry with no events and no ``problem`` (all duplicates, or deleted while pending) only
    needs acknowledging; one with a ``problem`` could not be decoded and is dead-lettered as it
    is, with its original ``fields``.
    """

    id: str
    events: list[Event]
    source_id: str = ""
    duplicates: frozenset[int] = frozenset()
    problem: str | None = None
    fields: dict[str, Any] | None = None

    @property
    def replayed_at(self) -> float | None:
        """For an entry of a replay stream: when it was replayed (epoch seconds), from which
        its events' retry window is measured."""
        value = (self.fields or {}).get("replayed_at")
        return int(value) / 1000 if value is not None else None

    @property
    def replay_rate(self) -> float | None:
        """For an entry of a replay stream: the events per second its replay may deliver
        (None: no limit)."""
        value = (self.fields or {}).get("rate")
        rate = float(value) if value is not None else 0.0
        return rate if rate > 0 else None


def decode_entry(
    entry_id: Any, fields: dict[Any, Any] | None, *, skip_duplicates: bool = True
) -> StreamEntry:
    """The entry ``entry_id`` from its raw fields (as XREADGROUP/XRANGE return them).

    ``skip_duplicates=False`` keeps the events listed in ``dup`` (tests look at them).
    """
    entry_id = text(entry_id)
    if not fields:
        # An entry deleted or trimmed while pending comes back without fields.
        return StreamEntry(entry_id, [])
    named = {text(key): value for key, value in fields.items()}
    source_id = text(named.get("src", b""))
    version = named.get("v", FORMAT_VERSION)
    if text(version) != FORMAT_VERSION.decode():
        # Written by a newer collector than this reader: keep it for a replay, don't guess.
        return StreamEntry(
            entry_id, [], source_id, problem=f"unknown entry format v={text(version)}", fields=named
        )
    try:
        payload = named.get("d", b"")
        if not isinstance(payload, bytes):
            raise TypeError("field d came back as text: read the stream without decode_responses")
        events = event_list_decoder.decode(payload)
        skip = frozenset(int(index) for index in text(named.get("dup", b"")).split(",") if index)
        if "n" in named and int(named["n"]) != len(events):
            raise ValueError(f"n={text(named['n'])} but d holds {len(events)} events")
    except (msgspec.DecodeError, ValueError, TypeError) as error:
        return StreamEntry(
            entry_id, [], source_id, problem=f"undecodable entry: {error}", fields=named
        )
    if skip and skip_duplicates:
        events = [event for index, event in enumerate(events) if index not in skip]
    return StreamEntry(entry_id, events, source_id, skip, fields=named)


def entries_of_reply(reply: Any) -> list[StreamEntry]:
    """The entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    per_stream = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    return [
        decode_entry(entry_id, fields)
        for stream_entries in per_stream
        for entry_id, fields in stream_entries
    ]


# --- dead letters -------------------------------------------------------------------------------


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a sink's dead-letter stream: events that sink gave up on, and why.

    ``errors`` holds a reason per event (by messageId) when the sink said which events failed;
    ``error`` is the reason for the whole batch otherwise. ``entry_ids`` are the stream entries
    the events came from.
    """

    sink: str
    events: list[Event]
    error: str
    attempts: int
    entry_ids: list[str]
    failed_at: str
    errors: dict[str, str] = {}
    # The stream the entries came from: "events", or "replay" (a replay that failed again).
    origin: str = "events"


def dead_letter_fields(letter: DeadLetter) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "sink": letter.sink,
        "n": len(letter.events),
        "d": encode_events(letter.events),
        "error": letter.error,
        "attempts": letter.attempts,
        "entry_ids": ",".join(letter.entry_ids),
        "failed_at": letter.failed_at,
        "origin": letter.origin,
    }
    if letter.errors:
        fields["errors"] = msgspec.msgpack.encode(letter.errors)
    return fields


def undecodable_dead_letter_fields(entry: StreamEntry, sink: str, problem: str) -> dict[str, Any]:
    """An entry that could not be decoded, kept exactly as written (``v``, ``src``, ``n``,
    ``d``, ``dup``) so a newer reader can replay it, with why it was set aside."""
    return {
        **(entry.fields or {}),
        "sink": sink,
        "error": problem,
        "attempts": 0,
        "entry_ids": entry.id,
        "failed_at": now_iso(),
    }


# --- consumer groups ----------------------------------------------------------------------------


class ConsumerGroup:
    """One sink's consumer group on the events stream (or on its replay stream, ``stream``),
    as one consumer in it uses it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        group: str,
        consumer: str,
        *,
        stream: str | None = None,
    ) -> None:
        self.redis = redis
        self.stream = stream or stream_key(prefix)
        self.dead_letters = dead_letter_key(prefix, group)
        self.group = group
        self.consumer = consumer
        self._forget_consumer = redis.register_script(FORGET_CONSUMER_SCRIPT)

    async def create(self, start: str = "0") -> bool:
        """Create the group (and the stream) if missing; True when this call created it.

        From id 0 by default: a new sink starts with whatever the stream still holds, not only
        what comes next. A workspace destination starts where the version that added it was
        applied (``start``).
        """
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
            return False
        return True

    async def read_new(self, count: int, block_ms: int | None = None) -> list[StreamEntry]:
        """Entries never delivered to any consumer of the group, now ours (``>``)."""
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return entries_of_reply(reply)

    async def read_own_pending(self, after: str, count: int) -> list[StreamEntry]:
        """Entries delivered to this consumer and not acknowledged, after id ``after``."""
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: after}, count=count
        )
        return entries_of_reply(reply)

    async def reclaim(
        self, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[StreamEntry]]:
        """Take over entries idle for ``min_idle_ms`` (XAUTOCLAIM); returns the next cursor."""
        reply = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=min_idle_ms,
            start_id=cursor,
            count=count,
        )
        # reply[2] (Redis 7) lists entries deleted from the stream while pending; Redis has
        # already removed them from the pending list, so there is nothing to acknowledge.
        return text(reply[0]), [decode_entry(entry_id, fields) for entry_id, fields in reply[1]]

    async def claim(self, ids: Sequence[str], *, idle_ms: int | None = None) -> None:
        """Claim ``ids`` to this consumer again: resets their idle time (or sets it to
        ``idle_ms``, which lets another consumer's next reclaim take them at once)."""
        await self.redis.xclaim(
            self.stream, self.group, self.consumer, 0, list(ids), idle=idle_ms, justid=True
        )

    async def ack(self, ids: Sequence[str]) -> None:
        await self.redis.xack(self.stream, self.group, *ids)

    async def dead_letter(self, letters: Iterable[dict[str, Any]], ids: Sequence[str]) -> None:
        """Add dead-letter entries and acknowledge ``ids``, in one transaction: a crash cannot
        leave a batch both dead-lettered and pending."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for fields in letters:
                pipe.xadd(self.dead_letters, fields)
            if ids:
                pipe.xack(self.stream, self.group, *ids)
            await pipe.execute()

    async def forget_departed(self, idle_over_ms: int) -> list[str]:
        """Remove consumers with nothing pending and no contact for ``idle_over_ms``."""
        removed = []
        for raw in await self.redis.xinfo_consumers(self.stream, self.group):
            info = {text(key): value for key, value in raw.items()}
            name = text(info["name"])
            if name == self.consumer or int(info.get("pending") or 0) > 0:
                continue
            if int(info.get("idle") or 0) > idle_over_ms:
                if await self._forget_consumer(keys=[self.stream], args=[self.group, name]) != -1:
                    removed.append(name)
        return removed


async def group_names(redis: aioredis.Redis, stream: str) -> list[str]:
    """The consumer groups on ``stream`` (none when the stream does not exist)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as error:
        if "no such key" in str(error).lower():
            return []
        raise
    return [text({text(key): value for key, value in raw.items()}["name"]) for raw in groups]


async def trim_acknowledged(redis: aioredis.Redis, stream: str) -> int:
    """Remove the entries of ``stream`` that every consumer group has acknowledged.

    For each group the first entry it still needs is its oldest pending entry, or, with nothing
    pending, the one after its last-delivered id; the stream is trimmed (XTRIM MINID, exact)
    below the lowest of these. A stream without groups is never trimmed: nothing says its
    entries were delivered anywhere. Returns the number of entries removed.
    """
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as error:
        if "no such key" in str(error).lower():
            return 0
        raise
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for raw_group in groups:
        group = {text(key): value for key, value in raw_group.items()}
        # Both figures only ever rise while we look (reads deliver later ids, acks remove the
        # oldest), so a slightly stale reading trims less, never more.
        needed = id_after(parse_id(group["last-delivered-id"]))
        if int(group.get("pending") or 0) > 0:
            summary = await redis.xpending(stream, group["name"])
            if summary and summary.get("min") is not None:
                needed = min(needed, parse_id(summary["min"]))
        floor = needed if floor is None else min(floor, needed)
    assert floor is not None
    return int(await redis.xtrim(stream, minid=format_id(floor), approximate=False))
