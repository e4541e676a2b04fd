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

from signalsmith.buffer import stream_key
from signalsmith.model import Event, event_list_decoder

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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_entry(entry_id: Any, fields: dict[Any, Any]) -> BufferedEntry:
    """Decode one ``XRANGE`` entry of the events stream."""
    named = {_text(key): value for key, value in fields.items()}
    payload = named["d"]
    if not isinstance(payload, bytes):
        raise TypeError(
            "the stream's d field came back as text: read it with a Redis client created "
            "without decode_responses=True"
        )
    dup = _text(named.get("dup", b""))
    events = event_list_decoder.decode(payload)
    if "n" in named and int(named["n"]) != len(events):
        raise ValueError(
            f"entry {_text(entry_id)} says n={_text(named['n'])} but holds {len(events)}"
        )
    return BufferedEntry(
        id=_text(entry_id),
        source_id=_text(named.get("src", b"")),
        payload=payload,
        events=events,
        duplicates=frozenset(int(index) for index in dup.split(",") if index),
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
