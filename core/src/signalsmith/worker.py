"""The worker: delivers buffered events to every sink, one Redis consumer group per sink.

Steps 9-12 of the pipeline (``shared/design.md``). For each sink a task reads the stream
``P:events`` through the sink's own consumer group (named after the sink), gathers entries into
batches, calls the plugin that registered the sink and acknowledges the entries. A failed batch
is retried with backoff, then moved to the sink's dead-letter stream ``P:dlq:<sink>``. Entries a
crashed consumer left pending are reclaimed with XAUTOCLAIM, and the stream is trimmed below what
every group has acknowledged.

Delivery is at least once: after a crash a sink may see a batch again, never zero times.
``docs/worker.md`` describes the behaviour for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import pluggy
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from signalsmith.buffer import FORMAT_VERSION, dead_letter_key, stream_key
from signalsmith.config import Settings
from signalsmith.gc_tuning import tune_gc
from signalsmith.model import Event, event_list_decoder, event_list_encoder
from signalsmith.plugins import (
    PluginConfigError,
    call_impl,
    impls_in_call_order,
    resolve,
    sink_hook_impl,
)
from signalsmith.records import Outcome, PermanentSinkError, Sink, SinkError, StageStatus
from signalsmith.runtime import Runtime, start_runtime, stop_runtime

log = logging.getLogger("signalsmith.worker")

T = TypeVar("T")

# How often each worker process trims the stream.
TRIM_INTERVAL_SECONDS = 5.0
# The longest gap between two reclaim passes of a sink (shorter when the claim idle time is).
RECLAIM_INTERVAL_MAX_SECONDS = 5.0
# The most entries one XREADGROUP or XAUTOCLAIM call returns, whatever a sink's batch size.
MAX_ENTRIES_PER_READ = 1000
# While a batch is delivered, the stream is looked at this often for the next one (see
# SinkConsumer._read_ahead).
READ_AHEAD_POLL_SECONDS = 0.02
# A consumer with nothing pending and no contact for this long belonged to a process that is
# gone (a live one polls every worker_block_ms): it is removed from its group's listing, which
# would otherwise grow by one name per sink at every restart.
FORGET_CONSUMER_AFTER_MS = 3_600_000
# Back-off ceiling after a Redis error, so a loop resumes within seconds once Redis is back.
REDIS_BACKOFF_MAX_SECONDS = 5.0
# Errors that mean "Redis cannot be reached right now": the same command is worth retrying.
TRANSIENT_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

# Removes a consumer from a group only if it has nothing pending, atomically: a consumer that
# reads between our look at it and the removal keeps its entries.
# KEYS[1] stream; ARGV: group, consumer. Returns -1 when the consumer has pending entries.
FORGET_CONSUMER_SCRIPT = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


# --- small helpers ------------------------------------------------------------------------


def consumer_name() -> str:
    """A consumer name unique to this process (and this Worker): hostname-pid-random."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(cap, base * 2**(attempt-1))]``.

    Full jitter spreads the retries of many workers that hit the same failing destination.
    """
    exponent = min(max(attempt - 1, 0), 62)  # past this the cap has long been reached
    ceiling = min(cap, base * 2.0**exponent)
    return random.uniform(0.0, max(ceiling, 0.0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_id(value: Any) -> tuple[int, int]:
    milliseconds, _, sequence = _text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


def _format_id(stream_id: tuple[int, int]) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def _id_after(stream_id: tuple[int, int]) -> tuple[int, int]:
    milliseconds, sequence = stream_id
    if sequence >= 2**64 - 1:
        return milliseconds + 1, 0
    return milliseconds, sequence + 1


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True, at once, if ``stop`` is or becomes set."""
    if stop.is_set():
        return True
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


def _read_block_ms(configured: int, redis: aioredis.Redis) -> int:
    """XREADGROUP's BLOCK: at least 1 (0 means "forever") and under the socket timeout.

    A blocked read that outlasts the client's socket timeout is reported as a timeout error.
    """
    block = max(1, int(configured))
    pool = getattr(redis, "connection_pool", None)
    timeout = getattr(pool, "connection_kwargs", {}).get("socket_timeout")
    if timeout:
        block = min(block, max(1, int(timeout * 1000) - 500))
    return block


def _stream_entries(reply: Any) -> list[tuple[str, dict[str, Any] | None]]:
    """The ``(id, fields)`` pairs of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    per_stream = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    return [
        (_text(entry_id), _named(fields))
        for stream_entries in per_stream
        for entry_id, fields in stream_entries
    ]


def _named(fields: Any) -> dict[str, Any] | None:
    # An entry deleted or trimmed while pending comes back without fields.
    if not fields:
        return None
    return {_text(key): value for key, value in fields.items()}


# --- stream entries ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """One stream entry as a consumer holds it: its events to deliver, or why there are none.

    ``events`` excludes the duplicates listed in ``dup``. An entry with no events and no
    ``problem`` (all duplicates, or deleted while pending) only needs acknowledging; one with a
    ``problem`` could not be decoded and is dead-lettered as it is, with its original ``fields``.
    """

    id: str
    events: list[Event]
    problem: str | None = None
    fields: dict[str, Any] | None = None


def _decode_entry(entry_id: str, fields: dict[str, Any] | None) -> _Entry:
    if fields is None:
        return _Entry(entry_id, [])
    version = fields.get("v", FORMAT_VERSION)
    if _text(version) != FORMAT_VERSION.decode():
        # Written by a newer collector than this worker: keep it for a replay, don't guess.
        return _Entry(entry_id, [], f"unknown entry format v={_text(version)}", fields)
    try:
        events = event_list_decoder.decode(fields.get("d", b""))
        skip = {int(index) for index in _text(fields.get("dup", b"")).split(",") if index}
    except (msgspec.DecodeError, ValueError, TypeError) as error:
        return _Entry(entry_id, [], f"undecodable entry: {error}", fields)
    if skip:
        events = [event for index, event in enumerate(events) if index not in skip]
    return _Entry(entry_id, events)


# --- trimming -----------------------------------------------------------------------------------


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
        group = {_text(key): value for key, value in raw_group.items()}
        # Both figures only ever rise while we look (reads deliver later ids, acks remove the
        # oldest), so a slightly stale reading trims less, never more.
        needed = _id_after(_parse_id(group["last-delivered-id"]))
        if int(group.get("pending") or 0) > 0:
            summary = await redis.xpending(stream, group["name"])
            if summary and summary.get("min") is not None:
                needed = min(needed, _parse_id(summary["min"]))
        floor = needed if floor is None else min(floor, needed)
    assert floor is not None
    return int(await redis.xtrim(stream, minid=_format_id(floor), approximate=False))


# --- one sink -----------------------------------------------------------------------------------


class SinkConsumer:
    """Delivers the stream to one sink through the sink's consumer group (one task per sink)."""

    def __init__(
        self,
        runtime: Runtime,
        sink: Sink,
        consumer: str,
        observers: Sequence[pluggy.HookImpl] = (),
    ) -> None:
        settings = runtime.settings
        self.redis: aioredis.Redis = runtime.redis
        self.settings = settings
        self.sink = sink
        self.group = sink.name
        self.consumer = consumer
        self.stream = stream_key(settings.key_prefix)
        self.dead_letters = dead_letter_key(settings.key_prefix, sink.name)
        self.max_attempts = max(1, sink.max_attempts)
        self._impl = sink_hook_impl(runtime.pm, sink)
        self._observers = list(observers)
        self._forget_consumer = self.redis.register_script(FORGET_CONSUMER_SCRIPT)
        self._block_ms = _read_block_ms(settings.worker_block_ms, self.redis)
        claim_idle_seconds = settings.worker_claim_idle_ms / 1000
        self._reclaim_every = min(RECLAIM_INTERVAL_MAX_SECONDS, max(0.1, claim_idle_seconds / 2))
        # Held entries are re-claimed to ourselves this often during a retry wait, well inside
        # the idle time after which another worker would take them.
        self._touch_every = max(0.05, claim_idle_seconds / 3)
        # Entries delivered to this consumer and not yet in a batch (left over from a read, own
        # pending, reclaimed), and the ids of those plus the batch in flight: never queued twice.
        self._backlog: deque[_Entry] = deque()
        self._held: set[str] = set()
        self._group_ready = False
        self._read_own_pending = True
        self._claim_cursor = "0-0"
        self._next_reclaim = 0.0

    # -- the loop --

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; the batch in flight then is finished first."""
        failures = 0
        while not stop.is_set():
            try:
                await self._step(stop)
                failures = 0
            except Exception as error:  # the loop outlives Redis outages and plugin bugs
                failures += 1
                if isinstance(error, ResponseError) and "NOGROUP" in str(error):
                    self._group_ready = False  # the group (or the stream) was deleted
                # A read that failed midway may have handed us entries we never saw; they are
                # in our pending list.
                self._read_own_pending = True
                delay = backoff_delay(
                    failures,
                    self.settings.worker_retry_base_seconds,
                    min(self.settings.worker_retry_max_seconds, REDIS_BACKOFF_MAX_SECONDS),
                )
                log.warning(
                    "sink %s: %s; retrying in %.2fs",
                    self.sink.name,
                    _describe(error),
                    delay,
                    exc_info=not isinstance(error, RedisError),
                )
                await _sleep_unless_stopped(stop, delay)
        await self._release_backlog()
        log.info("sink %s: stopped", self.sink.name)

    async def _release_backlog(self) -> None:
        """Let another worker take the entries read here and not delivered, without waiting.

        They stay pending to this consumer (Redis has no way to hand an entry back); setting
        their idle time to the claim idle time makes the next reclaim pass of any worker take
        them, instead of one ``SIGNALSMITH_WORKER_CLAIM_IDLE_MS`` from now.
        """
        ids = [entry.id for entry in self._backlog]
        if not ids:
            return
        try:
            await self.redis.xclaim(
                self.stream,
                self.group,
                self.consumer,
                0,
                ids,
                idle=self.settings.worker_claim_idle_ms,
                justid=True,
            )
        except (RedisError, OSError) as error:  # they are reclaimed once idle anyway
            log.debug("sink %s: could not release read-ahead entries: %s", self.sink.name, error)
            return
        self._backlog.clear()
        self._held.difference_update(ids)
        log.info("sink %s: released %d entries read but not delivered", self.sink.name, len(ids))

    async def _step(self, stop: asyncio.Event) -> None:
        if not self._group_ready:
            await self._create_group()
        if self._read_own_pending:
            await self._load_own_pending()
            self._read_own_pending = False
        # Reclaim on schedule, and keep going through a long pending list while idle.
        if time.monotonic() >= self._next_reclaim or (
            self._claim_cursor != "0-0" and not self._backlog
        ):
            await self._reclaim()
        batch = await self._next_batch(stop)
        if not batch:
            return
        delivered = asyncio.Event()
        ahead = asyncio.create_task(self._read_ahead(delivered, stop))
        try:
            await self._process(batch, stop)
        finally:
            delivered.set()
            await ahead

    async def _read_ahead(self, delivered: asyncio.Event, stop: asyncio.Event) -> None:
        """Read and decode the next batch's entries while the current batch is delivered.

        A sink's delivery mostly waits (on a network call, or on a warehouse engine that runs
        without the GIL), so reading the stream and decoding entries meanwhile takes them off
        the critical path. Reads never block in Redis: the stream is looked at every
        ``READ_AHEAD_POLL_SECONDS`` until the delivery is over or the next batch is full, so
        under load the next batch holds what arrived during this one. The entries are held like
        any others (touched during retry waits, reloaded as own pending after a failed read).
        """
        limit = max(1, self.sink.batch_size)
        while not delivered.is_set() and not stop.is_set():
            queued = sum(len(entry.events) or 1 for entry in self._backlog)
            if queued >= limit:
                return
            try:
                reply = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=min(limit - queued, MAX_ENTRIES_PER_READ),
                )
            except (RedisError, OSError) as error:
                # The read may have handed us entries we never saw: reload them next step.
                self._read_own_pending = True
                log.debug("sink %s: read-ahead failed: %s", self.sink.name, _describe(error))
                return
            entries = _stream_entries(reply)
            for entry_id, fields in entries:
                entry = _decode_entry(entry_id, fields)
                self._held.add(entry.id)
                self._backlog.append(entry)
            if not entries:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(delivered.wait(), READ_AHEAD_POLL_SECONDS)

    async def _create_group(self) -> None:
        # Id 0: a new sink starts with whatever the stream still holds, not only what comes next.
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("sink %s: created consumer group on %s", self.sink.name, self.stream)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    def _queue(self, entries: Iterable[tuple[str, dict[str, Any] | None]]) -> int:
        queued = 0
        for entry_id, fields in entries:
            if entry_id in self._held:
                continue
            self._held.add(entry_id)
            self._backlog.append(_decode_entry(entry_id, fields))
            queued += 1
        return queued

    async def _load_own_pending(self) -> None:
        """Queue what this consumer was handed and has not acknowledged (XREADGROUP from 0)."""
        last = "0-0"
        while True:
            reply = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: last}, count=MAX_ENTRIES_PER_READ
            )
            entries = _stream_entries(reply)
            if not entries:
                return
            queued = self._queue(entries)
            if queued:
                log.info("sink %s: resuming %d pending entries", self.sink.name, queued)
            last = entries[-1][0]

    async def _reclaim(self) -> None:
        """Take over entries idle longer than the claim idle time (their consumer died)."""
        self._next_reclaim = time.monotonic() + self._reclaim_every
        reply = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.settings.worker_claim_idle_ms,
            start_id=self._claim_cursor,
            count=min(max(1, self.sink.batch_size), MAX_ENTRIES_PER_READ),
        )
        # reply[2] (Redis 7) lists entries deleted from the stream while pending; Redis has
        # already removed them from the pending list, so there is nothing to acknowledge.
        self._claim_cursor = _text(reply[0])
        queued = self._queue((_text(entry_id), _named(fields)) for entry_id, fields in reply[1])
        if queued:
            log.warning(
                "sink %s: reclaimed %d entries idle for over %d ms (a consumer died or stalled)",
                self.sink.name,
                queued,
                self.settings.worker_claim_idle_ms,
            )
        if self._claim_cursor == "0-0":  # a full pass over the pending list
            await self._forget_departed_consumers()

    async def _forget_departed_consumers(self) -> None:
        for raw in await self.redis.xinfo_consumers(self.stream, self.group):
            info = {_text(key): value for key, value in raw.items()}
            name = _text(info["name"])
            if name == self.consumer or int(info.get("pending") or 0) > 0:
                continue
            if int(info.get("idle") or 0) > FORGET_CONSUMER_AFTER_MS:
                removed = await self._forget_consumer(keys=[self.stream], args=[self.group, name])
                if removed != -1:
                    log.info("sink %s: removed departed consumer %s", self.sink.name, name)

    async def _next_batch(self, stop: asyncio.Event) -> list[_Entry]:
        """Entries holding up to ``batch_size`` events: queued ones first, else new ones.

        New entries are read until the batch is full or ``max_wait_seconds`` have passed since
        the first arrived. An entry is acknowledged as a whole so it is never split: a batch is
        over the size only when a single entry is.
        """
        limit = max(1, self.sink.batch_size)
        batch: list[_Entry] = []
        count = 0
        while self._backlog and (not batch or count + len(self._backlog[0].events) <= limit):
            entry = self._backlog.popleft()
            batch.append(entry)
            count += len(entry.events)
        if batch:
            # Entries already ours are late already: deliver them without waiting for more.
            return batch
        deadline: float | None = None
        while count < limit and not self._backlog and not stop.is_set():
            block_ms = self._block_ms
            if deadline is not None:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms < 1:  # BLOCK 0 would mean "wait forever"
                    break
                block_ms = min(block_ms, remaining_ms)
            try:
                reply = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    # Every entry holds at least one event, so this never reads past the limit
                    # by more than the events of multi-event entries.
                    count=min(limit - count, MAX_ENTRIES_PER_READ),
                    block=block_ms,
                )
            except BaseException:
                # The entries read so far are held: queue them for the next batch, or they
                # would be skipped as held when the pending list is reloaded.
                self._backlog.extendleft(reversed(batch))
                raise
            entries = _stream_entries(reply)
            if not entries:
                if not batch:
                    return []  # idle: let the loop look at stop and the reclaim schedule
                continue
            if deadline is None:
                deadline = time.monotonic() + max(0.0, self.sink.max_wait_seconds)
            for entry_id, fields in entries:
                entry = _decode_entry(entry_id, fields)
                self._held.add(entry.id)
                if self._backlog or (batch and count + len(entry.events) > limit):
                    self._backlog.append(entry)  # starts the next batch, in stream order
                else:
                    batch.append(entry)
                    count += len(entry.events)
        return batch

    # -- one batch --

    async def _process(self, batch: list[_Entry], stop: asyncio.Event) -> None:
        try:
            await self._process_held(batch, stop)
        finally:
            # Acknowledged, dead-lettered, or left pending for a reclaim: no longer held.
            self._held.difference_update(entry.id for entry in batch)

    async def _process_held(self, batch: list[_Entry], stop: asyncio.Event) -> None:
        nothing_to_deliver = [e.id for e in batch if not e.events and e.problem is None]
        if nothing_to_deliver:
            await self._ack(nothing_to_deliver, stop)
        for entry in batch:
            if entry.problem is not None:
                await self._dead_letter_undecodable(entry, stop)
        entries = [entry for entry in batch if entry.events]
        if not entries:
            return
        events = [event for entry in entries for event in entry.events]
        ids = [entry.id for entry in entries]
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._deliver(events)
            except Exception as caught:  # any failure of the plugin is the sink failing
                error: Exception = caught
            else:
                await self._ack(ids, stop)
                log.debug(
                    "sink %s: delivered %d events from %d entries",
                    self.sink.name,
                    len(events),
                    len(ids),
                )
                await self._observe(events, "delivered")
                return
            if isinstance(error, PermanentSinkError) or attempt >= self.max_attempts:
                break
            delay = self._retry_delay(attempt, error)
            log.warning(
                "sink %s: attempt %d of %d failed for %d events: %s; retrying in %.2fs",
                self.sink.name,
                attempt,
                self.max_attempts,
                len(events),
                _describe(error),
                delay,
                exc_info=error if not isinstance(error, SinkError) else None,
            )
            await self._observe(
                events,
                "retried",
                reason=_describe(error),
                detail=f"attempt {attempt} of {self.max_attempts}",
            )
            if await self._wait_holding(delay, stop):
                # Not acknowledged and not dead-lettered: another consumer (or this one's
                # successor) reclaims the entries once they have been idle long enough.
                log.warning(
                    "sink %s: stopping; %d entries left pending for a later reclaim",
                    self.sink.name,
                    len(ids),
                )
                return
        await self._dead_letter(events, ids, error, attempt, stop)
        await self._observe(
            events, "dead_lettered", reason=_describe(error), detail=f"after {attempt} attempts"
        )

    async def _deliver(self, events: list[Event]) -> None:
        # A copy each time: a plugin that edits the list must not change what a retry or the
        # dead-letter stream gets.
        if self.sink.kind == "warehouse":
            result = call_impl(self._impl, warehouse=self.sink, events=list(events))
        else:
            result = call_impl(self._impl, destination=self.sink, events=list(events))
        await resolve(result)

    def _retry_delay(self, attempt: int, error: Exception) -> float:
        retry_after = error.retry_after if isinstance(error, SinkError) else None
        if retry_after is not None and retry_after >= 0:
            return float(retry_after)  # the destination said when; sooner would be refused
        return backoff_delay(
            attempt,
            self.settings.worker_retry_base_seconds,
            self.settings.worker_retry_max_seconds,
        )

    async def _wait_holding(self, delay: float, stop: asyncio.Event) -> bool:
        """Wait out a retry delay; return True if ``stop`` cut it short.

        Meanwhile the held entries are claimed to ourselves again now and then, which resets
        their idle time, so another worker's reclaim doesn't take (and deliver) a batch that is
        only waiting for its next attempt.
        """
        deadline = time.monotonic() + delay
        while True:
            await self._touch_held()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if await _sleep_unless_stopped(stop, min(remaining, self._touch_every)):
                return True

    async def _touch_held(self) -> None:
        if not self._held:
            return
        try:
            await self.redis.xclaim(
                self.stream, self.group, self.consumer, 0, sorted(self._held), justid=True
            )
        except RedisError as error:  # at worst another worker reclaims the batch
            log.debug("sink %s: could not refresh held entries: %s", self.sink.name, error)

    async def _ack(self, ids: list[str], stop: asyncio.Event) -> None:
        await self._until_done(stop, "XACK", lambda: self.redis.xack(self.stream, self.group, *ids))

    async def _dead_letter(
        self,
        events: list[Event],
        ids: list[str],
        error: Exception,
        attempts: int,
        stop: asyncio.Event,
    ) -> None:
        fields: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "sink": self.sink.name,
            "n": len(events),
            "d": event_list_encoder.encode(events),
            "error": _describe(error),
            "attempts": attempts,
            "entry_ids": ",".join(ids),
            "failed_at": _now_iso(),
        }
        await self._dead_letter_and_ack(fields, ids, stop)
        log.error(
            "sink %s: dead-lettered %d events (%d entries) to %s after %d attempts: %s",
            self.sink.name,
            len(events),
            len(ids),
            self.dead_letters,
            attempts,
            _describe(error),
        )

    async def _dead_letter_undecodable(self, entry: _Entry, stop: asyncio.Event) -> None:
        # Kept exactly as written (v, src, n, d, dup), so a newer worker can replay it.
        fields: dict[str, Any] = {
            **(entry.fields or {}),
            "sink": self.sink.name,
            "error": entry.problem or "undecodable entry",
            "attempts": 0,
            "entry_ids": entry.id,
            "failed_at": _now_iso(),
        }
        await self._dead_letter_and_ack(fields, [entry.id], stop)
        log.error(
            "sink %s: dead-lettered entry %s to %s: %s",
            self.sink.name,
            entry.id,
            self.dead_letters,
            entry.problem,
        )
        await self._observe_undecodable(entry)

    async def _dead_letter_and_ack(
        self, fields: dict[str, Any], ids: list[str], stop: asyncio.Event
    ) -> None:
        async def move() -> None:
            # One transaction: a crash cannot leave the batch both dead-lettered and pending.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self.dead_letters, fields)
                pipe.xack(self.stream, self.group, *ids)
                await pipe.execute()

        await self._until_done(stop, "dead-lettering", move)

    async def _until_done(
        self, stop: asyncio.Event, what: str, operation: Callable[[], Awaitable[T]]
    ) -> T:
        """Run a write that settles a batch, retrying while Redis is unreachable.

        Giving up early would leave the batch pending, and the sink would get it again. Once
        ``stop`` is set one more failure is final; the entries then stay pending, not lost.
        """
        failures = 0
        while True:
            try:
                return await operation()
            except TRANSIENT_REDIS_ERRORS as error:
                failures += 1
                if stop.is_set():
                    raise
                delay = backoff_delay(
                    failures, self.settings.worker_retry_base_seconds, REDIS_BACKOFF_MAX_SECONDS
                )
                log.warning(
                    "sink %s: %s failed (%s); retrying in %.2fs",
                    self.sink.name,
                    what,
                    _describe(error),
                    delay,
                )
                await _sleep_unless_stopped(stop, delay)

    # -- observers --

    async def _observe(
        self,
        events: list[Event],
        status: StageStatus,
        *,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        if not self._observers:
            return
        await self._notify(
            [
                Outcome(
                    stage="deliver",
                    status=status,
                    message_id=event.message_id,
                    source_id=event.project_id or None,
                    sink=self.sink.name,
                    reason=reason,
                    detail=detail,
                )
                for event in events
            ]
        )

    async def _observe_undecodable(self, entry: _Entry) -> None:
        if not self._observers:
            return
        source = _text(entry.fields.get("src", b"")) if entry.fields else ""
        await self._notify(
            [
                Outcome(
                    stage="deliver",
                    status="dead_lettered",
                    message_id=None,
                    source_id=source or None,
                    sink=self.sink.name,
                    reason=entry.problem,
                    detail=f"entry {entry.id}",
                )
            ]
        )

    async def _notify(self, outcomes: list[Outcome]) -> None:
        for impl in self._observers:
            try:
                await resolve(call_impl(impl, outcomes=outcomes))
            except Exception:  # an observer can never hold up or fail a delivery
                log.exception("observer %s failed", impl.plugin_name)


# --- the worker ----------------------------------------------------------------------------------


class Worker:
    """Every sink's consumer loop, each in its own task, plus the periodic trim of the stream."""

    def __init__(
        self,
        runtime: Runtime,
        only: Iterable[str] | None = None,
        *,
        consumer: str | None = None,
        trim_interval: float = TRIM_INTERVAL_SECONDS,
    ) -> None:
        """Serve every registered sink, or only the sinks named in ``only``.

        Raises ``PluginConfigError`` when ``only`` names a sink no plugin registers, or a
        sink's plugin implements no delivery hook.
        """
        self.runtime = runtime
        self.consumer = consumer or consumer_name()
        self.stream = stream_key(runtime.settings.key_prefix)
        self.trim_interval = trim_interval
        registered = runtime.sinks
        self.registered_names = frozenset(sink.name for sink in registered)
        if only is not None:
            wanted = list(dict.fromkeys(only))
            unknown = [name for name in wanted if name not in self.registered_names]
            if unknown:
                raise PluginConfigError(
                    f"no sink named {', '.join(map(repr, unknown))}; registered sinks: "
                    f"{', '.join(sorted(self.registered_names)) or 'none'}"
                )
            registered = [sink for sink in registered if sink.name in wanted]
        self.sinks: list[Sink] = registered
        observers = impls_in_call_order(runtime.pm, "observe_outcomes")
        self.consumers = [
            SinkConsumer(runtime, sink, self.consumer, observers) for sink in self.sinks
        ]

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; each sink finishes its batch in flight, then return."""
        if self.sinks:
            log.info(
                "worker %s: delivering %s to %d sink(s): %s",
                self.consumer,
                self.stream,
                len(self.sinks),
                ", ".join(f"{s.name} ({s.kind}, plugin {s.plugin})" for s in self.sinks),
            )
        else:
            log.warning(
                "worker %s: no sinks to deliver to; install a destination or warehouse plugin "
                "(and check SIGNALSMITH_LOAD_PLUGINS / SIGNALSMITH_BLOCK_PLUGINS). Idling "
                "until stopped; events stay buffered.",
                self.consumer,
            )
        tasks = [
            asyncio.create_task(consumer.run(stop), name=f"signalsmith-sink-{consumer.sink.name}")
            for consumer in self.consumers
        ]
        tasks.append(asyncio.create_task(self._trim_forever(stop), name="signalsmith-trim"))
        try:
            await asyncio.gather(*tasks)
        finally:
            # Only does something when run() itself was cancelled (or a task failed).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _trim_forever(self, stop: asyncio.Event) -> None:
        warned: set[str] = set()
        while True:
            try:
                removed = await trim_acknowledged(self.runtime.redis, self.stream)
                if removed:
                    log.debug("trimmed %d acknowledged entries from %s", removed, self.stream)
                await self._warn_unserved_groups(warned)
            except Exception as error:  # trimming late only costs memory; never crash for it
                log.warning("trimming %s failed: %s", self.stream, _describe(error))
            if await _sleep_unless_stopped(stop, self.trim_interval):
                return

    async def _warn_unserved_groups(self, warned: set[str]) -> None:
        """Say once per group when a group has no sink here: it holds trimming back."""
        try:
            groups = await self.runtime.redis.xinfo_groups(self.stream)
        except ResponseError:
            return
        for raw in groups:
            name = _text({_text(key): value for key, value in raw.items()}["name"])
            if name in self.registered_names or name in warned:
                continue
            warned.add(name)
            log.warning(
                "consumer group %r on %s belongs to no sink this worker knows; until some "
                "worker delivers it, the stream is not trimmed past it. If the sink was "
                "removed for good: XGROUP DESTROY %s %s",
                name,
                self.stream,
                self.stream,
                name,
            )


def run_worker(settings: Settings, only: Sequence[str] | None = None) -> None:
    """Run the worker until SIGINT or SIGTERM: the ``signalsmith worker`` command.

    The first signal finishes each sink's batch in flight, then stops; a second stops at once
    (whatever was not acknowledged is redelivered later).
    """
    try:
        # uvloop, as the collector's Granian workers use: the worker's Redis and HTTP I/O is
        # event-loop bound too (uvloop comes with granian[uvloop], a core dependency).
        uvloop.run(_run_until_signalled(settings, only))
    except PluginConfigError as error:
        raise SystemExit(f"signalsmith worker: {error}") from None


async def _run_until_signalled(settings: Settings, only: Sequence[str] | None) -> None:
    runtime = await start_runtime(settings, "worker")
    tune_gc()
    try:
        worker = Worker(runtime, only)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop), name="signalsmith-worker")
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            if stop.is_set():
                log.warning("%s again: stopping now", signum.name)
                running.cancel()
            else:
                log.info("%s: finishing the batches in flight, then stopping", signum.name)
                stop.set()

        handled: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, on_signal, signum)
                handled.append(signum)
        try:
            await asyncio.wait([running])
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
        if not running.cancelled():
            running.result()  # surface an unexpected failure
    finally:
        await stop_runtime(runtime)
