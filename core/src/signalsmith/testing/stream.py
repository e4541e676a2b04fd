"""Read back what a collector buffered: the entries of a prefix's stream, and their events.

The stream ``<prefix>:events`` holds one entry per request (fields ``v``, ``src``, ``n``, ``d``
and, when some events were duplicates, ``dup``). These helpers decode ``d`` and skip the
indexes listed in ``dup``, as consumers do, so a test sees each buffered event exactly once.
Pass a Redis client that does not decode responses (``d`` is msgpack).
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis as sync_redis
import redis.asyncio as aioredis

from signalsmith import stream
from signalsmith.model import Event
from signalsmith.stream import stream_key

_PAGE = 500


class BufferedEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stream entry: the events of one request, and which of them were duplicates."""

    id: str
    source_id: str
    payload: bytes
    events: list[Event]
    duplicates: frozenset[int] = frozenset()

    @property
    def fresh_events(self) -> list[Event]:
        """The events consumers deliver: every event not listed in ``dup``."""
        return [e for i, e in enumerate(self.events) if i not in self.duplicates]


def decode_entry(entry_id: Any, fields: dict[Any, Any]) -> BufferedEntry:
    """Decode one ``XRANGE`` entry of the events stream (with ``signalsmith.stream``'s decoder)."""
    entry = stream.decode_entry(entry_id, fields, skip_duplicates=False)
    if entry.problem is not None:
        raise ValueError(f"entry {entry.id}: {entry.problem}")
    return BufferedEntry(
        id=entry.id,
        source_id=entry.source_id,
        payload=(entry.fields or {})["d"],
        events=entry.events,
        duplicates=entry.duplicates,
    )


def _next_start(last_id: str) -> str:
    return "(" + last_id


async def read_entries(redis: aioredis.Redis, key_prefix: str) -> list[BufferedEntry]:
    """Every entry of ``<key_prefix>:events``, oldest first."""
    entries: list[BufferedEntry] = []
    start = "-"
    while True:
        page = await redis.xrange(stream_key(key_prefix), min=start, max="+", count=_PAGE)
        entries.extend(decode_entry(entry_id, fields) for entry_id, fields in page)
        if len(page) < _PAGE:
            return entries
        start = _next_start(entries[-1].id)


async def read_events(redis: aioredis.Redis, key_prefix: str) -> list[Event]:
    """Every buffered event of ``key_prefix`` in stream order, duplicates skipped."""
    return [
        event for entry in await read_entries(redis, key_prefix) for event in entry.fresh_events
    ]


def read_entries_sync(redis: sync_redis.Redis, key_prefix: str) -> list[BufferedEntry]:
    """``read_entries`` for a synchronous client (whole-system tests, threads)."""
    entries: list[BufferedEntry] = []
    start = "-"
    while True:
        page = redis.xrange(stream_key(key_prefix), min=start, max="+", count=_PAGE)
        entries.extend(decode_entry(entry_id, fields) for entry_id, fields in page)  # type: ignore[union-attr]
        if len(page) < _PAGE:  # type: ignore[arg-type]
            return entries
        start = _next_start(entries[-1].id)


def read_events_sync(redis: sync_redis.Redis, key_prefix: str) -> list[Event]:
    """``read_events`` for a synchronous client."""
    return [event for entry in read_entries_sync(redis, key_prefix) for event in entry.fresh_events]


def events_by_message_id(events: list[Event]) -> dict[str, list[Event]]:
    """Group events by ``message_id``: a test asserts each list has exactly one event."""
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.message_id, []).append(event)
    return grouped
