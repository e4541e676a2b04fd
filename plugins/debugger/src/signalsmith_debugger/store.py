"""Where the debugger keeps things in Redis, and how traces are laid out, read and capped.

Keys (``P`` is ``SIGNALSMITH_KEY_PREFIX``):

- ``P:debugger:live:<source>``: a stream per source (``-`` for requests refused before a source
  was known); each stream entry lists where about ``live_records_per_entry`` outcomes' entries
  are in the trace slice (``s``, ``k``), holds those no trace can (``x``, framed), and counts
  what the chart draws (``n``, ``e``, ``v``, ``f``). Capped by ``XADD MAXLEN ~`` and trimmed to
  the live window (``XTRIM MINID ~``) by the janitor. ``P:debugger:sources`` maps each source
  to when it was last seen.
- ``P:debugger:trace:<slice>``: a sorted set per slice of time (all scores 0, so members are
  found by lexical range) holding two kinds of member: each observed entry (``Entry``: one
  request's stage, one sink's settled batch) once, after ``ENTRY_MARK`` and its key; and per
  messageId and flush an index member, the messageId (length-prefixed) then where its outcomes
  are (entry key and position). A slice closes after ``slice_seconds`` or once it holds 1/16 of
  the cap; ``P:debugger:trace-slices`` maps each slice to the bytes accounted to it.
- The janitor (any one process at a time) drops slices past the retention and, while the
  accounted total is above ``trace_max_bytes``, the oldest slice: the cap holds, evicting
  oldest first, at most about 1/16 of what is kept at a time.
- ``P:debugger:tokens``: scoped viewer tokens, by SHA-256 (``access``).
"""

from __future__ import annotations

import logging
import os
import random
import struct
import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from signalsmith_debugger.config import DebuggerConfig
from signalsmith_debugger.records import Entry, Record, entry_decoder

if TYPE_CHECKING:
    from signalsmith import Runtime

log = logging.getLogger("signalsmith.debugger")

# Redis memory per trace member beyond the allocation holding its bytes (a sorted-set skiplist
# node, its dict entry and table slot), measured on Redis 7.0 with jemalloc
# (tests/test_store.py::test_accounting_covers_what_redis_uses holds it).
MEMBER_OVERHEAD = 104
# An sds string's header and terminator, around a member's bytes.
_SDS_EXTRA = 6
_LENGTH = struct.Struct(">H")
_KEY = struct.Struct(">IQ")


class DebuggerKeys:
    """The plugin's Redis keys under one deployment's prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}:debugger"
        self.sources = f"{self.prefix}:sources"
        self.slices = f"{self.prefix}:trace-slices"
        self.janitor = f"{self.prefix}:janitor"
        self.tokens = f"{self.prefix}:tokens"
        self.unrecorded = f"{self.prefix}:unrecorded"
        self.live_prefix = f"{self.prefix}:live:"

    @classmethod
    def of(cls, runtime: Runtime) -> DebuggerKeys:
        return cls(runtime.settings.key_prefix)

    def live(self, source: str) -> str:
        return self.live_prefix + source

    def slice(self, name: str) -> str:
        return f"{self.prefix}:trace:{name}"


# --- trace members -------------------------------------------------------------------------

# Entry members sort after every index member: those start with a messageId's length, and no
# messageId traced is 65,535 bytes long.
ENTRY_MARK = b"\xff\xff"
# An entry's key: the writer (4 bytes) and its sequence (8).
ENTRY_KEY_BYTES = 12
# A reference in an index member: an entry's key and the outcome's position in it.
_REFERENCE = struct.Struct(">12sH")


def member_prefix(message_id: str) -> bytes:
    """What every index member of ``message_id`` starts with: its length, then itself, so that
    no messageId's members fall in another's range (one may be a prefix of another)."""
    raw = message_id.encode()
    return _LENGTH.pack(len(raw)) + raw


class MemberWriter:
    """Builds members unique across processes: a random writer id and a sequence in each key."""

    def __init__(self) -> None:
        self._writer = (os.getpid() ^ random.getrandbits(32)) & 0xFFFFFFFF
        self._sequence = 0

    def entry_key(self) -> bytes:
        self._sequence += 1
        return _KEY.pack(self._writer, self._sequence)

    @staticmethod
    def entry_member(key: bytes, entry: bytes) -> bytes:
        return b"".join((ENTRY_MARK, key, entry))


def reference(key: bytes, position: int) -> bytes:
    """Where an outcome is: its entry's key and its position there."""
    return _REFERENCE.pack(key, position)


def index_member(message_id: str, references: list[bytes]) -> bytes:
    """Where ``message_id``'s outcomes of one flush are (unique: each entry's key is)."""
    raw = message_id.encode()
    return b"".join((_LENGTH.pack(len(raw)), raw, *references))


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds for every member that starts with ``prefix``.

    The upper bound is the prefix's successor (its last byte that is not 0xff, plus one), not
    ``prefix + b"\\xff"``: a member whose next byte is 0xff (a writer id can start with it)
    sorts after that bound, and would never be found.
    """
    stem = prefix.rstrip(b"\xff")
    if not stem:
        return b"[" + prefix, b"+"
    return b"[" + prefix, b"(" + stem[:-1] + bytes((stem[-1] + 1,))


def member_references(member: bytes) -> list[tuple[bytes, int]]:
    length = _LENGTH.unpack_from(member)[0]
    start = _LENGTH.size + length
    return [
        _REFERENCE.unpack_from(member, offset)
        for offset in range(start, len(member), _REFERENCE.size)
    ]


def member_cost(member: bytes) -> int:
    """The Redis memory a member takes, as the cap counts it: its string rounded up to the
    allocator's size class (jemalloc's: four classes per doubling), plus the set's overhead."""
    return allocation_size(len(member) + _SDS_EXTRA) + MEMBER_OVERHEAD


def allocation_size(size: int) -> int:
    if size <= 16:
        return 16
    if size <= 128:
        return (size + 15) // 16 * 16
    spacing = 1 << ((size - 1).bit_length() - 3)
    return (size + spacing - 1) // spacing * spacing


def frame(blobs: list[bytes]) -> bytes:
    """Entries as a live stream entry holds them: each after its length (4 bytes)."""
    return b"".join(b"".join((len(blob).to_bytes(4, "big"), blob)) for blob in blobs)


def entry_keys(joined: bytes) -> list[bytes]:
    """The entry keys a live stream entry lists (``k``), each ENTRY_KEY_BYTES long."""
    return [joined[at : at + ENTRY_KEY_BYTES] for at in range(0, len(joined), ENTRY_KEY_BYTES)]


def unframe(framed: bytes) -> list[bytes]:
    blobs = []
    position = 0
    while position < len(framed):
        length = int.from_bytes(framed[position : position + 4], "big")
        blobs.append(framed[position + 4 : position + 4 + length])
        position += 4 + length
    return blobs


# --- slices -----------------------------------------------------------------------------------


def slice_name(bucket: int, part: int) -> str:
    # Fixed width, so names sort as (bucket, part) do.
    return f"{bucket:012d}.{part:04d}"


def slice_bucket(name: str) -> int:
    return int(name.partition(".")[0])


class SliceCursor:
    """The slice this process writes traces to: the current time bucket, and within it the
    first part that is not full (parts close once they hold 1/16 of the cap)."""

    def __init__(self, config: DebuggerConfig) -> None:
        self.seconds = config.slice_seconds
        self.max_bytes = config.slice_max_bytes
        self.bucket = -1
        self.part = 0

    def current(self, now: float) -> str:
        bucket = int(now // self.seconds)
        if bucket != self.bucket:
            self.bucket, self.part = bucket, 0
        return slice_name(self.bucket, self.part)

    def accounted(self, name: str, total: int) -> None:
        """What the slice ``name`` holds after a write: move on once it is full."""
        if total >= self.max_bytes and name == slice_name(self.bucket, self.part):
            self.part += 1

    def resume(self, names: list[str], now: float) -> None:
        """Start where the other processes are: the newest part of the current bucket."""
        self.current(now)
        parts = [int(name.partition(".")[2]) for name in names if slice_bucket(name) == self.bucket]
        if parts:
            self.part = max(parts)


class TraceReader:
    """Reads one messageId's records from every slice kept."""

    def __init__(self, redis: aioredis.Redis, keys: DebuggerKeys, config: DebuggerConfig) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config

    async def slices(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.slices)
        return {_text(name): int(size) for name, size in raw.items()}

    async def entries(self, slice_name: str, keys: list[bytes]) -> list[Entry]:
        """The entries of ``slice_name`` with these keys (those still kept)."""
        if not keys:
            return []
        slice_key = self.keys.slice(slice_name)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrangebylex(slice_key, *prefix_range(ENTRY_MARK + key))
            found = await pipe.execute()
        start = len(ENTRY_MARK) + ENTRY_KEY_BYTES
        return [entry_decoder.decode(members[0][start:]) for members in found if members]

    async def records(self, message_id: str) -> tuple[list[Record], float | None]:
        """Every record of ``message_id``, in time order; and since when traces are kept."""
        names = sorted(await self.slices())
        if not names:
            return [], None
        prefix = member_prefix(message_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebylex(self.keys.slice(name), *prefix_range(prefix))
            indexes = await pipe.execute()
        wanted = [
            (name, key, position)
            for name, members in zip(names, indexes, strict=True)
            for member in members
            for key, position in member_references(member)
        ]
        keys = list(dict.fromkeys((name, key) for name, key, _ in wanted))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, key in keys:
                pipe.zrangebylex(self.keys.slice(name), *prefix_range(ENTRY_MARK + key))
            found = await pipe.execute()
        entries = {
            slice_key: entry_decoder.decode(members[0][len(ENTRY_MARK) + ENTRY_KEY_BYTES :])
            for slice_key, members in zip(keys, found, strict=True)
            if members
        }
        records = [
            entries[name, key].expand(position)
            for name, key, position in wanted
            if (name, key) in entries
        ]
        records.sort(key=lambda record: record.at)
        kept_since = slice_bucket(names[0]) * self.config.slice_seconds
        return records, float(kept_since)


class Janitor:
    """Holds the traces to their retention and memory cap, and the live streams to their window.

    Every process with the debugger runs one; a lock lets one of them work per interval.
    """

    def __init__(self, redis: aioredis.Redis, keys: DebuggerKeys, config: DebuggerConfig) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config

    async def run_once(self, now: float | None = None, *, force: bool = False) -> list[str]:
        """One pass; returns the slices it removed. Without ``force`` it works only when no
        other process has in this interval."""
        now = time.time() if now is None else now
        if not force:
            interval_ms = max(1, int(self.config.janitor_seconds * 1000))
            if not await self.redis.set(self.keys.janitor, b"1", nx=True, px=interval_ms):
                return []
        removed = await self._cap_traces(now)
        await self._trim_live(now)
        return removed

    async def _cap_traces(self, now: float) -> list[str]:
        slices = {
            _text(name): int(size)
            for name, size in (await self.redis.hgetall(self.keys.slices)).items()
        }
        if not slices:
            return []
        config = self.config
        # A slice is kept until its last moment is older than the retention.
        oldest_kept = int((now - config.trace_seconds) // config.slice_seconds)
        removed = [name for name in sorted(slices) if slice_bucket(name) < oldest_kept]
        total = sum(size for name, size in slices.items() if name not in removed)
        for name in sorted(slices):
            if total <= config.trace_max_bytes:
                break
            if name in removed:
                continue
            removed.append(name)
            total -= slices[name]
        if removed:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in removed:
                    pipe.unlink(self.keys.slice(name))
                pipe.hdel(self.keys.slices, *removed)
                await pipe.execute()
            log.info(
                "debugger: dropped %d trace slices (%s); %d bytes of traces kept",
                len(removed),
                ", ".join(removed[:3]) + ("..." if len(removed) > 3 else ""),
                total,
            )
        return removed

    async def _trim_live(self, now: float) -> None:
        sources = {
            _text(name): float(seen)
            for name, seen in (await self.redis.hgetall(self.keys.sources)).items()
        }
        if not sources:
            return
        window = self.config.live_seconds
        min_id = f"{int((now - window) * 1000)}-0"
        gone = [source for source, seen in sources.items() if seen < now - window]
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in sources:
                if source in gone:
                    pipe.unlink(self.keys.live(source))
                else:
                    pipe.xtrim(self.keys.live(source), minid=min_id, approximate=True)
            if gone:
                pipe.hdel(self.keys.sources, *gone)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
