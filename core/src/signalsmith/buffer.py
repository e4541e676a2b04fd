"""The durable buffer: appends each request's events to the events stream, deduplicated.

The stream's layout and entry format are ``signalsmith.stream``'s; this module adds what only
the collector does: dedupe by messageId and the atomic append. Seen messageIds are kept in
``P:seen-ids:<n>`` (one set per time bucket; see ``APPEND_SCRIPT``), not ``P:seen:``, where
earlier versions kept one key per messageId: a numeric messageId could name a bucket.

Appends from concurrent requests are coalesced into one pipelined round trip (auto-pipelining,
``signalsmith.autopipeline``); each request is answered only after Redis has confirmed its own
entry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from signalsmith.autopipeline import AutoPipelineRedis
from signalsmith.model import Event
from signalsmith.stream import entry_fields, stream_key

log = logging.getLogger("signalsmith.buffer")

# Atomically: refuse when the backlog is over its cap, find which messageIds were seen within
# the dedupe window, remember the new ones, and append one entry holding the events, listing the
# duplicates so consumers skip them.
#
# Seen ids are kept in one set per time bucket (``prefix .. n``, n = Redis time // span, span =
# half the TTL): an id is a duplicate when it is in the current bucket or one of the two before,
# so it is remembered for at least the TTL and at most one and a half. Each bucket is looked up
# with one SMISMEMBER for all of a request's ids and filled with one SADD: bench/append_cost.py
# measured 4.1 -> 1.7 µs of Redis CPU per event against a SET NX EX per id (per-call work in
# Lua, the key and its expiry entry). The bucket that has just left the window is UNLINKed here
# (freed off Redis's main thread; its EXPIREAT is the backstop when appends stop).
#
# KEYS[1] stream; ARGV: cap, ttl, seen-prefix, ids (a msgpack array: one argument instead of
# one per id, which costs redis-py ~2 µs an argument to pack), then the entry's fields as
# name, value, ... (``stream.entry_fields``); the script adds ``dup``.
# Returns -1 when over the cap, else the list of duplicate indexes (0-based) in the payload.
APPEND_SCRIPT = """
local stream = KEYS[1]
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('XLEN', stream) >= cap then
  return -1
end
local span = math.ceil(tonumber(ARGV[2]) / 2)
local bucket = math.floor(tonumber(redis.call('TIME')[1]) / span)
local prefix = ARGV[3]
local ids = cmsgpack.unpack(ARGV[4])
local n = #ids
-- Lua unpacks at most a few thousand values into one call: ids go in chunks.
local CHUNK = 1000
local seen = {}
for back = 0, 2 do
  local key = prefix .. (bucket - back)
  for first = 1, n, CHUNK do
    local last = math.min(first + CHUNK - 1, n)
    local found = redis.call('SMISMEMBER', key, unpack(ids, first, last))
    for i = first, last do
      if found[i - first + 1] == 1 then seen[i] = true end
    end
  end
end
local dups, fresh, in_request = {}, {}, {}
for i = 1, n do
  local id = ids[i]
  if seen[i] or in_request[id] then
    dups[#dups + 1] = i - 1
  else
    in_request[id] = true
    fresh[#fresh + 1] = id
  end
end
if #fresh > 0 then
  local current = prefix .. bucket
  for first = 1, #fresh, CHUNK do
    redis.call('SADD', current, unpack(fresh, first, math.min(first + CHUNK - 1, #fresh)))
  end
  redis.call('EXPIREAT', current, (bucket + 3) * span + 60)
  redis.call('UNLINK', prefix .. (bucket - 3))
  local entry = {}
  for i = 5, #ARGV do entry[#entry + 1] = ARGV[i] end
  if #dups > 0 then
    entry[#entry + 1] = 'dup'
    entry[#entry + 1] = table.concat(dups, ',')
  end
  redis.call('XADD', stream, '*', unpack(entry))
end
return dups
"""


class BufferUnavailable(Exception):
    """Redis could not take the events; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BacklogFull(BufferUnavailable):
    """The stream holds more unprocessed entries than its cap: the sinks are behind."""


_ids_encoder = msgspec.msgpack.Encoder()


def seen_key_prefix(prefix: str) -> str:
    return f"{prefix}:seen-ids:"


class EventBuffer:
    """Appends batches of events to the stream, deduplicated by messageId, coalescing requests."""

    script_source = APPEND_SCRIPT

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key_prefix: str,
        backlog_max_entries: int,
        dedupe_ttl_seconds: int,
        max_pending_appends: int = 10_000,
        retry_after_seconds: int = 5,
    ) -> None:
        self.redis = redis
        # Appends are coalesced by an auto-pipelining client: the collector's own (so an append
        # shares its round trip with the other requests' commands, rate-limit scripts included),
        # or one made here on the given client's connections.
        self._owns_pipeliner = not isinstance(redis, AutoPipelineRedis)
        self._pipeliner: AutoPipelineRedis = (
            AutoPipelineRedis(connection_pool=redis.connection_pool)
            if self._owns_pipeliner
            else redis  # type: ignore[assignment]
        )
        self.key_prefix = key_prefix
        self.stream = stream_key(key_prefix)
        self._seen_prefix = seen_key_prefix(key_prefix)
        self._backlog_max = backlog_max_entries
        self._dedupe_ttl = dedupe_ttl_seconds
        self._max_pending = max_pending_appends
        self._retry_after = retry_after_seconds
        self._sha = redis.register_script(self.script_source).sha
        # Everything of the EVALSHA that is the same for every append, as bytes: redis-py sends
        # bytes as they are, and checks and encodes each str or int argument on every request.
        self._command_head: tuple[bytes, ...] = (
            b"EVALSHA",
            self._sha.encode(),
            b"1",
            self.stream.encode(),
            b"%d" % backlog_max_entries,
            b"%d" % dedupe_ttl_seconds,
            self._seen_prefix.encode(),
        )
        # Appends sent and not yet answered.
        self._waiting = 0

    async def append(self, source_id: str, events: Sequence[Event]) -> list[int]:
        """Buffer ``events`` as one stream entry; return the indexes that were duplicates.

        Returns only once Redis has confirmed the entry. Raises ``BufferUnavailable`` when Redis
        is unreachable or too slow to keep up, ``BacklogFull`` when the stream is over its cap.
        """
        if not events:
            return []
        if self._waiting >= self._max_pending:
            raise BufferUnavailable(
                "too many appends are waiting for Redis", retry_after=self._retry_after
            )
        args = self._script_args(source_id, events)
        # Encoded: the caller may let the events go before the round trip (see Pipeline.ingest).
        del events
        self._waiting += 1
        try:
            result = await self._run_script(args)
        finally:
            self._waiting -= 1
        if result == -1:
            raise BacklogFull(
                f"the event backlog is over its cap of {self._backlog_max} entries; "
                "sinks are behind",
                retry_after=self._retry_after,
            )
        return [int(index) for index in result]  # type: ignore[union-attr]

    def _script_args(self, source_id: str, events: Sequence[Event]) -> list[bytes]:
        """The append's arguments after the script's fixed ones (``_command_head``)."""
        return [
            _ids_encoder.encode([event.message_id for event in events]),
            *entry_fields(source_id, events),
        ]

    async def _run_script(self, args: list[object]) -> object:
        """EVALSHA the append script; a Redis that lost it (restart, SCRIPT FLUSH) answers
        NOSCRIPT having done nothing, so the append is sent again once the script is loaded."""
        command = (*self._command_head, *args)
        try:
            try:
                return await self._pipeliner.execute_command(*command)
            except NoScriptError:
                await self._pipeliner.script_load(self.script_source)
                return await self._pipeliner.execute_command(*command)
        # The client is told what failed, never Redis's own words (they can name a socket
        # path or a file); those go to the server log.
        except ResponseError as error:
            log.warning("redis refused an append: %s", error)
            raise BufferUnavailable(
                "the event buffer (Redis) refused the append; see the server log",
                retry_after=self._retry_after,
            ) from error
        except (RedisError, OSError) as error:
            log.warning("redis append failed: %s", error)
            raise BufferUnavailable(
                "the event buffer (Redis) is unreachable", retry_after=self._retry_after
            ) from error

    async def backlog(self) -> int:
        """Entries in the stream not yet trimmed (trimming follows the slowest sink)."""
        return int(await self.redis.xlen(self.stream))

    async def ready(self) -> tuple[bool, str]:
        """Whether this buffer can take events now, and why not."""
        try:
            backlog = await self.backlog()
        except (RedisError, OSError) as error:
            log.info("readiness: redis unreachable: %s", error)
            return False, f"redis unreachable ({type(error).__name__})"
        if self._backlog_max and backlog >= self._backlog_max:
            return False, f"backlog {backlog} is at its cap {self._backlog_max}"
        return True, f"backlog {backlog} of {self._backlog_max}"

    async def close(self) -> None:
        """Stop the coalescing this buffer started itself (the connections are the caller's)."""
        if self._owns_pipeliner:
            await self._pipeliner.stop()
