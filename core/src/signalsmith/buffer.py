"""The durable buffer: a Redis stream that holds every accepted event until each sink has it.

Layout (``P`` is ``Settings.key_prefix``):

- ``P:events``: the stream. One entry per request (not per event; see `docs/buffer.md` for the
  measurement), with fields ``v`` (format), ``src`` (source id), ``n`` (event count), ``d``
  (msgpack list of events) and, when some events were duplicates, ``dup`` (their indexes in
  ``d``, comma-separated; consumers skip them).
- ``P:seen:<messageId>``: dedupe markers, one per messageId, expiring after the dedupe TTL.
- ``P:dlq:<sink>``: a sink's dead-letter stream.
- one consumer group per sink on ``P:events``, named after the sink.

Appends from concurrent requests are coalesced into one pipelined round trip; each request is
answered only after Redis has confirmed its own entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from signalsmith.model import Event, event_list_encoder

log = logging.getLogger("signalsmith.buffer")

FORMAT_VERSION = b"1"

# Atomically: refuse when the backlog is over its cap, mark each messageId as seen (SET NX EX),
# and append one entry holding the events, listing the duplicates so consumers skip them.
# KEYS[1] stream; ARGV: cap, ttl, seen-prefix, source, payload, count, id1..idN.
# Returns -1 when over the cap, else the list of duplicate indexes (0-based) in the payload.
APPEND_SCRIPT = """
local stream = KEYS[1]
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('XLEN', stream) >= cap then
  return -1
end
local ttl = ARGV[2]
local prefix = ARGV[3]
local n = tonumber(ARGV[6])
local dups = {}
for i = 1, n do
  if not redis.call('SET', prefix .. ARGV[6 + i], '1', 'NX', 'EX', ttl) then
    dups[#dups + 1] = i - 1
  end
end
if #dups < n then
  if #dups > 0 then
    redis.call('XADD', stream, '*', 'v', '1', 'src', ARGV[4], 'n', n, 'd', ARGV[5],
               'dup', table.concat(dups, ','))
  else
    redis.call('XADD', stream, '*', 'v', '1', 'src', ARGV[4], 'n', n, 'd', ARGV[5])
  end
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


def stream_key(prefix: str) -> str:
    return f"{prefix}:events"


def dead_letter_key(prefix: str, sink_name: str) -> str:
    return f"{prefix}:dlq:{sink_name}"


def seen_key_prefix(prefix: str) -> str:
    return f"{prefix}:seen:"


class _PendingAppend:
    __slots__ = ("args", "future")

    def __init__(self, args: list[object], future: asyncio.Future[object]) -> None:
        self.args = args
        self.future = future


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
        self.key_prefix = key_prefix
        self.stream = stream_key(key_prefix)
        self._seen_prefix = seen_key_prefix(key_prefix)
        self._backlog_max = backlog_max_entries
        self._dedupe_ttl = dedupe_ttl_seconds
        self._max_pending = max_pending_appends
        self._retry_after = retry_after_seconds
        self._script = redis.register_script(self.script_source)
        self._pending: list[_PendingAppend] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, source_id: str, events: Sequence[Event]) -> list[int]:
        """Buffer ``events`` as one stream entry; return the indexes that were duplicates.

        Returns only once Redis has confirmed the entry. Raises ``BufferUnavailable`` when Redis
        is unreachable or too slow to keep up, ``BacklogFull`` when the stream is over its cap.
        """
        if not events:
            return []
        if len(self._pending) >= self._max_pending:
            raise BufferUnavailable(
                "too many appends are waiting for Redis", retry_after=self._retry_after
            )
        args = self._script_args(source_id, events)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingAppend(args, future))
        self._ensure_flusher()
        self._wake.set()
        result = await future
        if result == -1:
            raise BacklogFull(
                f"the event backlog is over its cap of {self._backlog_max} entries; "
                "sinks are behind",
                retry_after=self._retry_after,
            )
        return [int(index) for index in result]  # type: ignore[union-attr]

    def _script_args(self, source_id: str, events: Sequence[Event]) -> list[object]:
        return [
            self._backlog_max,
            self._dedupe_ttl,
            self._seen_prefix,
            source_id,
            event_list_encoder.encode(events),
            len(events),
            *(event.message_id for event in events),
        ]

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._flush(batch)

    async def _flush(self, batch: list[_PendingAppend]) -> None:
        try:
            if len(batch) == 1:
                results = [await self._run_script(batch[0].args)]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for item in batch:
                        # Queues EVALSHA on the pipeline (the script is loaded on first use).
                        await self._script(keys=[self.stream], args=item.args, client=pipe)
                    results = await pipe.execute(raise_on_error=False)
        except Exception as error:  # every waiting request must be answered, whatever failed
            log.warning("redis append failed for %d requests: %s", len(batch), error)
            failure = BufferUnavailable(
                f"the event buffer (Redis) is unreachable: {error}", retry_after=self._retry_after
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
            return
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, Exception):
                item.future.set_exception(
                    BufferUnavailable(
                        f"the event buffer (Redis) refused the append: {result}",
                        retry_after=self._retry_after,
                    )
                )
            else:
                item.future.set_result(result)

    async def _run_script(self, args: list[object]) -> object:
        try:
            return await self._script(keys=[self.stream], args=args)
        except ResponseError as error:
            return error

    async def backlog(self) -> int:
        """Entries in the stream not yet trimmed (trimming follows the slowest sink)."""
        return int(await self.redis.xlen(self.stream))

    async def ready(self) -> tuple[bool, str]:
        """Whether this buffer can take events now, and why not."""
        try:
            backlog = await self.backlog()
        except (RedisError, OSError) as error:
            return False, f"redis unreachable: {error}"
        if self._backlog_max and backlog >= self._backlog_max:
            return False, f"backlog {backlog} is at its cap {self._backlog_max}"
        return True, f"backlog {backlog} of {self._backlog_max}"

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except (asyncio.CancelledError, Exception):
                pass
            self._flusher = None
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(
                    BufferUnavailable("the collector is shutting down", retry_after=1)
                )
        self._pending = []
