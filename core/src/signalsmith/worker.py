"""The worker: delivers buffered events to every sink, one Redis consumer group per sink.

Steps 9-12 of the pipeline (``shared/design.md``). For each sink a task reads the events stream
through the sink's own consumer group (``signalsmith.stream``), gathers entries into batches,
routes them (the sink's ``Routing``: types, event names, consent, ``integrations``), calls the
plugin that registered the sink with what the sink takes, and acknowledges the entries. Failed
events are retried with backoff, then moved to the sink's dead-letter stream; a sink may say
which events of a batch failed (``DeliveryReport``), and only those are retried or
dead-lettered. Entries a crashed consumer left pending are reclaimed, and the stream is trimmed
below what every group has acknowledged.

Delivery is at least once: after a crash a sink may see a batch again, never zero times.
``docs/worker.md`` describes the behaviour for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from signalsmith.boot import start_runtime, stop_runtime
from signalsmith.config import Settings
from signalsmith.fql import FqlError
from signalsmith.gc_tuning import tune_gc
from signalsmith.hooks import PluginConfigError, resolve
from signalsmith.model import Event
from signalsmith.records import (
    DeliveryReport,
    Outcome,
    PermanentSinkError,
    Sink,
    SinkError,
    StageStatus,
)
from signalsmith.routing import Router
from signalsmith.runtime import Runtime
from signalsmith.stream import (
    ConsumerGroup,
    DeadLetter,
    StreamEntry,
    dead_letter_fields,
    group_names,
    now_iso,
    replay_key,
    stream_key,
    trim_acknowledged,
    undecodable_dead_letter_fields,
)
from signalsmith.workspace.groups import retire_removed_destinations

log = logging.getLogger("signalsmith.worker")

T = TypeVar("T")

# Entries a consumer reads before it knows how many events an entry holds.
FIRST_READ_ENTRIES = 16
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


# The replay consumer's rate before it has read an entry.
_RATE_UNKNOWN = object()


# --- small helpers ------------------------------------------------------------------------


def with_workspace_consent(sink: Sink, sink_consent: dict[str, tuple[str, ...]]) -> Sink:
    """A plugin-registered sink (a warehouse) with the consent categories the workspace version
    says it needs (``WorkspaceSection.sink_consent``) added to its ``Routing.consent``."""
    needed = sink_consent.get(sink.name)
    if not needed:
        return sink
    consent = tuple(dict.fromkeys((*sink.routing.consent, *needed)))
    return msgspec.structs.replace(
        sink, routing=msgspec.structs.replace(sink.routing, consent=consent)
    )


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


def _duration(seconds: float) -> str:
    """``14400`` -> ``4h``, ``90`` -> ``1m30s``, ``0.5`` -> ``0.5s``."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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


class _Settlement:
    """What became of a batch's events so far: delivered, or given up on with a reason."""

    __slots__ = ("attempts", "batch_error", "delivered", "rejected")

    def __init__(self) -> None:
        self.attempts = 0
        self.delivered: list[Event] = []
        # message_id -> (event, reason), in the order they were given up on.
        self.rejected: dict[str, tuple[Event, str]] = {}
        # Set when every remaining event failed together (an exception, retries spent).
        self.batch_error: str | None = None


# --- one sink -----------------------------------------------------------------------------------


class SinkConsumer:
    """Delivers the stream to one sink through the sink's consumer group (one task per sink).

    With ``replay=True`` it reads the sink's replay stream instead (``P:replay:<sink>``, events
    replayed from its dead letters), paced to the rate each replay asked for.
    """

    def __init__(
        self, runtime: Runtime, sink: Sink, consumer: str, *, replay: bool = False
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.redis: aioredis.Redis = runtime.redis
        self.settings = settings
        self.sink = sink
        self.consumer = consumer
        self.replay = replay
        self.group = ConsumerGroup(
            runtime.redis,
            settings.key_prefix,
            sink.name,
            consumer,
            stream=replay_key(settings.key_prefix, sink.name) if replay else None,
        )
        self.stream = self.group.stream
        self.dead_letters = self.group.dead_letters
        self._use(sink)
        self._observing = runtime.hooks.has_observers
        self._block_ms = _read_block_ms(settings.worker_block_ms, self.redis)
        claim_idle_seconds = settings.worker_claim_idle_ms / 1000
        self._reclaim_every = min(RECLAIM_INTERVAL_MAX_SECONDS, max(0.1, claim_idle_seconds / 2))
        # Held entries are re-claimed to ourselves this often during a retry wait, well inside
        # the idle time after which another worker would take them.
        self._touch_every = max(0.05, claim_idle_seconds / 3)
        # Entries delivered to this consumer and not yet in a batch (left over from a read, own
        # pending, reclaimed), and the ids of those plus the batch in flight: never queued twice.
        self._backlog: deque[StreamEntry] = deque()
        self._held: set[str] = set()
        self._group_ready = False
        self._read_own_pending = True
        self._claim_cursor = "0-0"
        self._next_reclaim = 0.0
        # A new workspace version of this sink, taken between two batches (replace_sink).
        self._next_sink: Sink | None = None
        self._retired = False
        # Where the group starts when this consumer creates it (see ConsumerGroup.create).
        self.group_start = "0"
        # Events per entry in what was read last (see _entries_for); 0 before the first read.
        self._events_per_entry = 0
        # The events per second the replay being read asked for (replay consumers only; None:
        # no limit).
        self._replay_rate: Any = _RATE_UNKNOWN

    def retire(self) -> None:
        """The sink was removed from the workspace: deliver no batch read from now on (the
        entries are released as the loop stops)."""
        self._retired = True

    def replace_sink(self, sink: Sink) -> None:
        """Deliver with ``sink`` (the sink in a new workspace version) from the next batch on:
        a batch is delivered with one version of the sink from start to end."""
        self._next_sink = sink

    def _take_next_sink(self) -> None:
        sink, self._next_sink = self._next_sink, None
        if sink is not None:
            self._use(sink)

    def _use(self, sink: Sink) -> None:
        self.sink = sink
        # What logs call this loop: the sink, or its replay stream's loop.
        self.label = f"{sink.name} (replay)" if self.replay else sink.name
        self.max_attempts = None if sink.max_attempts is None else max(1, sink.max_attempts)
        window = sink.retry_window_seconds
        self.retry_window = self.settings.worker_retry_window_seconds if window is None else window
        self._delivery = self.runtime.hooks.delivery(sink)
        self._sink_argument = "warehouse" if sink.kind == "warehouse" else "destination"
        try:
            self._router = Router(sink)
        except FqlError as error:  # a plugin's Routing (the workspace checks its own)
            raise PluginConfigError(f"sink {sink.name}: a routing condition: {error}") from None

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
                    self.label,
                    _describe(error),
                    delay,
                    exc_info=not isinstance(error, RedisError),
                )
                await _sleep_unless_stopped(stop, delay)
        await self._release_backlog()
        log.info("sink %s: stopped", self.label)

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
            await self.group.claim(ids, idle_ms=self.settings.worker_claim_idle_ms)
        except (RedisError, OSError) as error:  # they are reclaimed once idle anyway
            log.debug("sink %s: could not release read-ahead entries: %s", self.label, error)
            return
        self._backlog.clear()
        self._held.difference_update(ids)
        log.info("sink %s: released %d entries read but not delivered", self.label, len(ids))

    async def _step(self, stop: asyncio.Event) -> None:
        if not self._group_ready:
            if await self.group.create(self.group_start):
                log.info("sink %s: created consumer group on %s", self.label, self.stream)
            self._group_ready = True
        if self._read_own_pending:
            await self._load_own_pending()
            self._read_own_pending = False
        # Reclaim on schedule, and keep going through a long pending list while idle.
        if time.monotonic() >= self._next_reclaim or (
            self._claim_cursor != "0-0" and not self._backlog
        ):
            await self._reclaim()
        batch = await self._next_batch(stop)
        self._take_next_sink()
        if self._retired:
            self._backlog.extendleft(reversed(batch))  # released by run() as it stops
            return
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
        limit = self._batch_limit()
        while not delivered.is_set() and not stop.is_set():
            queued = sum(len(entry.events) or 1 for entry in self._backlog)
            if queued >= limit:
                return
            try:
                entries = await self.group.read_new(self._entries_for(limit - queued))
            except (RedisError, OSError) as error:
                # The read may have handed us entries we never saw: reload them next step.
                self._read_own_pending = True
                log.debug("sink %s: read-ahead failed: %s", self.label, _describe(error))
                return
            self._count_entries(entries)
            for entry in entries:
                self._held.add(entry.id)
                self._backlog.append(entry)
            if not entries:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(delivered.wait(), READ_AHEAD_POLL_SECONDS)

    def _entries_for(self, events: int) -> int:
        """How many entries to read for about ``events`` more events.

        XREADGROUP counts entries, and an entry holds one request's events (one, or a hundred
        from a batch): reading ``events`` entries could bring a hundred times too many, all held
        by this consumer and decoded at once (a slow sink would sit on the whole stream). The
        size of the entries read last is the estimate.
        """
        if self._events_per_entry == 0:  # nothing read yet: a few entries tell their size
            return max(1, min(FIRST_READ_ENTRIES, events))
        return max(1, min(MAX_ENTRIES_PER_READ, events // self._events_per_entry))

    def _count_entries(self, entries: list[StreamEntry]) -> None:
        if entries:
            self._events_per_entry = max(
                1, round(sum(len(entry.events) for entry in entries) / len(entries))
            )

    def _batch_limit(self) -> int:
        """The events a batch holds: the sink's batch size, and for a replay at most a second's
        worth of its rate, so the pace stays even."""
        limit = max(1, self.sink.batch_size)
        if self.replay and self._replay_rate is not _RATE_UNKNOWN:
            if self._replay_rate is not None:
                limit = min(limit, max(1, int(self._replay_rate)))
        elif self.replay:
            limit = 1  # one entry, to learn the rate of the replay being read
        return limit

    def _queue(self, entries: Iterable[StreamEntry]) -> int:
        queued = 0
        for entry in entries:
            if entry.id in self._held:
                continue
            self._held.add(entry.id)
            self._backlog.append(entry)
            queued += 1
        return queued

    async def _load_own_pending(self) -> None:
        """Queue what this consumer was handed and has not acknowledged (XREADGROUP from 0)."""
        last = "0-0"
        while True:
            entries = await self.group.read_own_pending(last, MAX_ENTRIES_PER_READ)
            if not entries:
                return
            queued = self._queue(entries)
            if queued:
                log.info("sink %s: resuming %d pending entries", self.label, queued)
            last = entries[-1].id

    async def _reclaim(self) -> None:
        """Take over entries idle longer than the claim idle time (their consumer died)."""
        self._next_reclaim = time.monotonic() + self._reclaim_every
        self._claim_cursor, entries = await self.group.reclaim(
            self.settings.worker_claim_idle_ms,
            self._claim_cursor,
            min(self._batch_limit(), MAX_ENTRIES_PER_READ),
        )
        queued = self._queue(entries)
        if queued:
            log.warning(
                "sink %s: reclaimed %d entries idle for over %d ms (a consumer died or stalled)",
                self.label,
                queued,
                self.settings.worker_claim_idle_ms,
            )
        if self._claim_cursor == "0-0":  # a full pass over the pending list
            for name in await self.group.forget_departed(FORGET_CONSUMER_AFTER_MS):
                log.info("sink %s: removed departed consumer %s", self.label, name)

    async def _next_batch(self, stop: asyncio.Event) -> list[StreamEntry]:
        """Entries holding up to ``batch_size`` events: queued ones first, else new ones.

        New entries are read until the batch is full or ``max_wait_seconds`` have passed since
        the first arrived. An entry is acknowledged as a whole so it is never split: a batch is
        over the size only when a single entry is.
        """
        limit = self._batch_limit()
        batch: list[StreamEntry] = []
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
                # Every entry holds at least one event, so this never reads past the limit by
                # more than the events of multi-event entries.
                entries = await self.group.read_new(
                    self._entries_for(limit - count), block_ms=block_ms
                )
            except BaseException:
                # The entries read so far are held: queue them for the next batch, or they
                # would be skipped as held when the pending list is reloaded.
                self._backlog.extendleft(reversed(batch))
                raise
            self._count_entries(entries)
            if not entries:
                if not batch:
                    return []  # idle: let the loop look at stop and the reclaim schedule
                continue
            if deadline is None:
                deadline = time.monotonic() + max(0.0, self.sink.max_wait_seconds)
            for entry in entries:
                self._held.add(entry.id)
                if self._backlog or (batch and count + len(entry.events) > limit):
                    self._backlog.append(entry)  # starts the next batch, in stream order
                else:
                    batch.append(entry)
                    count += len(entry.events)
        return batch

    # -- one batch --

    async def _process(self, batch: list[StreamEntry], stop: asyncio.Event) -> None:
        try:
            await self._process_held(batch, stop)
        finally:
            # Acknowledged, dead-lettered, or left pending for a reclaim: no longer held.
            self._held.difference_update(entry.id for entry in batch)

    async def _process_held(self, batch: list[StreamEntry], stop: asyncio.Event) -> None:
        nothing_to_deliver = [e.id for e in batch if not e.events and e.problem is None]
        if nothing_to_deliver:
            await self._ack(nothing_to_deliver, stop)
        for entry in batch:
            if entry.problem is not None:
                await self._dead_letter_undecodable(entry, stop)
        entries = [entry for entry in batch if entry.events]
        if not entries:
            return
        ids = [entry.id for entry in entries]
        # A replayed event's retry window starts again when it was replayed.
        restarted = {
            event.message_id: entry.replayed_at
            for entry in entries
            if entry.replayed_at is not None
            for event in entry.events
        }
        if self.replay:
            await self._pace(sum(len(entry.events) for entry in entries), entries, stop)
        events = await self._routed([event for entry in entries for event in entry.events])
        settled = _Settlement()
        if events and not await self._deliver_until_settled(events, settled, stop, restarted):
            # Stopped during a retry wait: not acknowledged and not dead-lettered, so another
            # consumer (or this one's successor) reclaims the entries once idle long enough.
            log.warning(
                "sink %s: stopping; %d entries left pending for a later reclaim",
                self.label,
                len(ids),
            )
            return
        if settled.rejected:
            await self._dead_letter(settled, ids, stop)
        else:
            await self._ack(ids, stop)
        log.debug(
            "sink %s: settled %d entries: %d events delivered, %d dead-lettered",
            self.label,
            len(ids),
            len(settled.delivered),
            len(settled.rejected),
        )

    async def _pace(self, count: int, entries: list[StreamEntry], stop: asyncio.Event) -> None:
        """Hold a replayed batch until the replay's rate allows it, across every worker.

        The events delivered per second are counted in Redis (one key per sink and second), so
        several workers sharing the replay group stay under the rate together.
        """
        rates = [rate for entry in entries if (rate := entry.replay_rate) is not None]
        self._replay_rate = rate = min(rates) if rates else None
        if rate is None:
            return
        while not stop.is_set():
            now = time.time()
            key = f"{self.settings.key_prefix}:replay-rate:{self.sink.name}:{int(now)}"
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, count)
                pipe.expire(key, 5)
                used, _ = await pipe.execute()
            # A batch is never larger than the rate, but one alone in its second always goes.
            if int(used) <= rate or int(used) == count:
                return
            await self.redis.decrby(key, count)
            await _sleep_unless_stopped(stop, math.ceil(now) - now + 0.001)

    async def _routed(self, events: list[Event]) -> list[Event]:
        """The events this sink takes, as its filters leave them; the others are skipped (and
        observers told why)."""
        if self._router.takes_everything:
            return events
        taken: list[Event] = []
        skipped: list[Outcome] = []
        route = self._router.route
        for event in events:
            routed, reason = route(event)
            if routed is not None:
                taken.append(routed)
            elif self._observing:
                skipped.append(self._outcome(event, "skipped", reason=reason))
        if skipped:
            await self._notify(skipped)
        return taken

    async def _deliver_until_settled(
        self,
        events: list[Event],
        settled: _Settlement,
        stop: asyncio.Event,
        restarted: dict[str, float] | None = None,
    ) -> bool:
        """Deliver ``events``, retrying the ones that fail, until each is delivered or given
        up on (in ``settled``). Returns False when ``stop`` cut a retry wait short.

        An event is given up on after ``max_attempts`` attempts (when set), at once for a
        ``PermanentSinkError``, and once its retry window has passed: the window runs from the
        event's ``received_at`` (or from its replay, ``restarted``), so it holds across
        restarts and reclaims. The last attempt is made at the end of the window.
        """
        pending = events
        attempt = 0
        restarted = restarted or {}
        while True:
            attempt += 1
            settled.attempts = attempt
            retry_after: float | None = None
            # Each event's own reason, when the sink said event by event (a report).
            reasons: dict[str, str] = {}
            try:
                report = await self._deliver(pending)
            except Exception as caught:  # any failure of the plugin is the sink failing
                error: str = _describe(caught)
                failed = pending
                permanent = isinstance(caught, PermanentSinkError)
                retry_after = caught.retry_after if isinstance(caught, SinkError) else None
                traceback = caught if not isinstance(caught, SinkError) else None
            else:
                failed, error = await self._apply_report(pending, report, settled)
                if not failed:
                    return True
                permanent = False
                retry_after = report.retry_after if report is not None else None
                reasons = report.retry if report is not None else {}
                traceback = None
            if permanent or (self.max_attempts is not None and attempt >= self.max_attempts):
                settled.batch_error = error if failed is pending else settled.batch_error
                for event in failed:
                    reason = reasons.get(event.message_id, error)
                    settled.rejected.setdefault(event.message_id, (event, reason))
                return True
            expiring = failed
            failed, deadline = self._within_window(failed, restarted, settled, error, reasons)
            if not failed:
                if expiring is pending and settled.batch_error is None:
                    # The whole batch failed together to the end: one reason for all of it.
                    reasons = {settled.rejected[e.message_id][1] for e in expiring}
                    settled.batch_error = reasons.pop() if len(reasons) == 1 else None
                return True
            delay = min(self._retry_delay(attempt, retry_after), max(0.0, deadline - time.time()))
            of = f" of {self.max_attempts}" if self.max_attempts is not None else ""
            log.warning(
                "sink %s: attempt %d%s failed for %d events: %s; retrying in %.2fs",
                self.label,
                attempt,
                of,
                len(failed),
                error,
                delay,
                exc_info=traceback,
            )
            await self._observe(failed, "retried", reason=error, detail=f"attempt {attempt}{of}")
            pending = failed
            if await self._wait_holding(delay, stop):
                return False

    def _within_window(
        self,
        failed: list[Event],
        restarted: dict[str, float],
        settled: _Settlement,
        error: str,
        reasons: dict[str, str],
    ) -> tuple[list[Event], float]:
        """The failed events still inside their retry window, and the earliest end of those
        windows; the others are given up on (in ``settled``), with their own last reason
        (``reasons``, from a report) or the batch's ``error``."""
        now = time.time()
        window = self.retry_window
        keep: list[Event] = []
        earliest = math.inf
        for event in failed:
            start = restarted.get(event.message_id) or event.received_at.timestamp()
            end = start + window
            if end <= now:
                last = reasons.get(event.message_id, error)
                reason = f"{last} (still failing after the retry window of {_duration(window)})"
                settled.rejected.setdefault(event.message_id, (event, reason))
            else:
                keep.append(event)
                earliest = min(earliest, end)
        return keep, earliest

    async def _apply_report(
        self, events: list[Event], report: DeliveryReport | None, settled: _Settlement
    ) -> tuple[list[Event], str]:
        """Settle what the sink said of each event; return the events to retry, and why."""
        if report is None or (not report.retry and not report.rejected):
            settled.delivered += events
            await self._observe(events, "delivered")
            return [], ""
        delivered: list[Event] = []
        retry: list[Event] = []
        for event in events:
            message_id = event.message_id
            if message_id in report.rejected:
                settled.rejected[message_id] = (event, report.rejected[message_id])
            elif message_id in report.retry:
                retry.append(event)
            else:
                delivered.append(event)
        settled.delivered += delivered
        await self._observe(delivered, "delivered")
        if not retry:
            return [], ""
        first = report.retry[retry[0].message_id]
        more = f" (and {len(retry) - 1} more)" if len(retry) > 1 else ""
        return retry, f"the sink asked to retry {len(retry)} events: {first}{more}"

    async def _deliver(self, events: list[Event]) -> DeliveryReport | None:
        # A copy each time: a plugin that edits the list must not change what a retry or the
        # dead-letter stream gets.
        result = self._delivery(
            **{self._sink_argument: self.sink},
            events=list(events),
            runtime=self.runtime,
        )
        return await resolve(result)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
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
            await self.group.claim(sorted(self._held))
        except RedisError as error:  # at worst another worker reclaims the batch
            log.debug("sink %s: could not refresh held entries: %s", self.label, error)

    async def _ack(self, ids: list[str], stop: asyncio.Event) -> None:
        await self._until_done(stop, "XACK", lambda: self.group.ack(ids))

    async def _dead_letter(self, settled: _Settlement, ids: list[str], stop: asyncio.Event) -> None:
        """Move the given-up events to the dead-letter stream and acknowledge the entries."""
        events = [event for event, _ in settled.rejected.values()]
        errors = {
            message_id: reason
            for message_id, (_, reason) in settled.rejected.items()
            if reason != settled.batch_error
        }
        summary = settled.batch_error or f"{len(events)} events rejected by the sink"
        letter = DeadLetter(
            sink=self.sink.name,
            events=events,
            error=summary,
            attempts=settled.attempts,
            entry_ids=ids,
            failed_at=now_iso(),
            errors=errors,
            origin="replay" if self.replay else "events",
        )
        fields = dead_letter_fields(letter)
        await self._until_done(
            stop, "dead-lettering", lambda: self.group.dead_letter([fields], ids)
        )
        log.error(
            "sink %s: dead-lettered %d events (from %d entries) to %s: %s",
            self.label,
            len(events),
            len(ids),
            self.dead_letters,
            summary,
        )
        if self._observing:
            await self._notify(
                [
                    self._outcome(event, "dead_lettered", reason=reason)
                    for event, reason in settled.rejected.values()
                ]
            )

    async def _dead_letter_undecodable(self, entry: StreamEntry, stop: asyncio.Event) -> None:
        problem = entry.problem or "undecodable entry"
        fields = undecodable_dead_letter_fields(entry, self.sink.name, problem)
        await self._until_done(
            stop, "dead-lettering", lambda: self.group.dead_letter([fields], [entry.id])
        )
        log.error(
            "sink %s: dead-lettered entry %s to %s: %s",
            self.label,
            entry.id,
            self.dead_letters,
            problem,
        )
        if self._observing:
            await self._notify(
                [
                    Outcome(
                        stage="deliver",
                        status="dead_lettered",
                        message_id=None,
                        source_id=entry.source_id or None,
                        sink=self.sink.name,
                        reason=problem,
                        detail=f"entry {entry.id}",
                    )
                ]
            )

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
                    self.label,
                    what,
                    _describe(error),
                    delay,
                )
                await _sleep_unless_stopped(stop, delay)

    # -- observers --

    def _outcome(
        self,
        event: Event,
        status: StageStatus,
        *,
        reason: str | None = None,
        detail: str | None = None,
    ) -> Outcome:
        return Outcome(
            stage="deliver",
            status=status,
            message_id=event.message_id,
            source_id=event.project_id or None,
            sink=self.sink.name,
            reason=reason,
            detail=detail,
            event=event,
        )

    async def _observe(
        self,
        events: list[Event],
        status: StageStatus,
        *,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        if not self._observing or not events:
            return
        await self._notify(
            [self._outcome(event, status, reason=reason, detail=detail) for event in events]
        )

    async def _notify(self, outcomes: list[Outcome]) -> None:
        # Each observer in its own try (Hooks.observe): one can never hold up or fail a delivery.
        await self.runtime.hooks.observe(outcomes, self.runtime)


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
        # The workspace's destinations come and go with its versions (WorkspaceConsumers).
        active = runtime.workspace.active
        declared = {sink.name for sink in active.destinations} if active else set()
        self.only = frozenset(only) if only is not None else None
        if only is not None:
            wanted = list(dict.fromkeys(only))
            unknown = [name for name in wanted if name not in self.registered_names | declared]
            if unknown:
                raise PluginConfigError(
                    f"no sink named {', '.join(map(repr, unknown))}; registered sinks: "
                    f"{', '.join(sorted(self.registered_names)) or 'none'}; workspace "
                    f"destinations: {', '.join(sorted(declared)) or 'none'}"
                )
            registered = [sink for sink in registered if sink.name in wanted]
        self.sinks: list[Sink] = registered
        # Each sink's events, and its replay stream (events replayed from its dead letters),
        # with the consent categories the workspace version adds (see follow_sink_consent).
        sink_consent = active.sink_consent if active is not None else {}
        self.consumers = [
            SinkConsumer(
                runtime, with_workspace_consent(sink, sink_consent), self.consumer, replay=replay
            )
            for sink in self.sinks
            for replay in (False, True)
        ]
        self.workspace_consumers = WorkspaceConsumers(self)

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
        elif self.runtime.workspace.active is None:
            log.warning(
                "worker %s: no sinks to deliver to; install a destination or warehouse plugin "
                "(and check SIGNALSMITH_LOAD_PLUGINS / SIGNALSMITH_BLOCK_PLUGINS), or declare "
                "destinations in the workspace. Idling until stopped; events stay buffered.",
                self.consumer,
            )
        tasks = [
            asyncio.create_task(consumer.run(stop), name=_task_name(consumer))
            for consumer in self.consumers
        ]
        tasks.append(asyncio.create_task(self._trim_forever(stop), name="signalsmith-trim"))
        tasks.append(
            asyncio.create_task(self.workspace_consumers.run(stop), name="signalsmith-workspace")
        )
        try:
            await asyncio.gather(*tasks)
        finally:
            # Only does something when run() itself was cancelled (or a task failed).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def follow_sink_consent(self) -> None:
        """Give each plugin-registered sink the consent categories of the version the process
        now runs, from its next batch on (a version that drops them drops them here too)."""
        active = self.runtime.workspace.active
        sink_consent = active.sink_consent if active is not None else {}
        registered = {sink.name: sink for sink in self.sinks}
        for consumer in self.consumers:
            wanted = with_workspace_consent(registered[consumer.sink.name], sink_consent)
            if wanted != consumer.sink:
                consumer.replace_sink(wanted)

    async def _trim_forever(self, stop: asyncio.Event) -> None:
        warned: set[str] = set()
        while True:
            try:
                removed = await trim_acknowledged(self.runtime.redis, self.stream)
                if removed:
                    log.debug("trimmed %d acknowledged entries from %s", removed, self.stream)
                for name in self._served_names():
                    await trim_acknowledged(
                        self.runtime.redis, replay_key(self.runtime.settings.key_prefix, name)
                    )
                for name in await retire_removed_destinations(
                    self.runtime.redis, self.stream, self.runtime.workspace, self.registered_names
                ):
                    log.info(
                        "destination %s is no longer in the workspace: deleted its consumer "
                        "group on %s (its dead letters stay)",
                        name,
                        self.stream,
                    )
                await self._warn_unserved_groups(warned)
            except Exception as error:  # trimming late only costs memory; never crash for it
                log.warning("trimming %s failed: %s", self.stream, _describe(error))
            if await _sleep_unless_stopped(stop, self.trim_interval):
                return

    def _served_names(self) -> list[str]:
        active = self.runtime.workspace.active
        names = [sink.name for sink in self.sinks]
        if active is not None:
            names += [
                sink.name
                for sink in active.destinations
                if self.only is None or sink.name in self.only
            ]
        return names

    async def _warn_unserved_groups(self, warned: set[str]) -> None:
        """Say once per group when a group has no sink here: it holds trimming back."""
        active = self.runtime.workspace.active
        served = {s.name for s in active.destinations} if active is not None else set()
        for name in await group_names(self.runtime.redis, self.stream):
            if name in self.registered_names or name in served or name in warned:
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


# --- workspace destinations (issue 11) ------------------------------------------------------------


class WorkspaceConsumers:
    """The consumers of the workspace's destinations, following the version the process runs:
    a destination added gets its consumers (its own group on the events stream and on its
    replay stream, its dead letters), a removed one's consumers finish their batch in flight
    and stop, a changed one switches between batches."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.running: dict[
            str, tuple[list[SinkConsumer], asyncio.Event, list[asyncio.Task[None]]]
        ] = {}
        self.stopping: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        # Called as the process switches versions, so no batch starts on a removed sink.
        self.worker.runtime.workspace.on_change(lambda _active: self._follow(stop))
        self._follow(stop)
        try:
            await stop.wait()
        finally:
            tasks = [task for _, _, tasks in self.running.values() for task in tasks]
            tasks += list(self.stopping)
            for _, consumer_stop, consumer_tasks in self.running.values():
                consumer_stop.set()
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    for task in consumer_tasks:
                        task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _follow(self, stop: asyncio.Event) -> None:
        self.worker.follow_sink_consent()
        active = self.worker.runtime.workspace.active
        only = self.worker.only
        wanted = {
            sink.name: sink
            for sink in (active.destinations if active is not None else ())
            if only is None or sink.name in only
        }
        for name, (consumers, consumer_stop, tasks) in list(self.running.items()):
            sink = wanted.get(name)
            if sink is None:
                log.info(
                    "destination %s is not in workspace version %s: stopping its consumer "
                    "after its batch in flight",
                    name,
                    active.version if active else "-",
                )
                for consumer in consumers:
                    consumer.retire()
                consumer_stop.set()
                del self.running[name]
                for task in tasks:
                    self.stopping.add(task)
                    task.add_done_callback(self.stopping.discard)
            elif sink != consumers[0].sink:
                for consumer in consumers:
                    consumer.replace_sink(sink)
        for name, sink in wanted.items():
            if name in self.running or stop.is_set():
                continue
            consumers = [
                SinkConsumer(self.worker.runtime, sink, self.worker.consumer, replay=replay)
                for replay in (False, True)
            ]
            if active is not None:
                # A destination new to the stream takes events from the version that added it
                # on, not the backlog collected before it existed.
                consumers[0].group_start = active.stream_position
            consumer_stop = asyncio.Event()
            tasks = [
                asyncio.create_task(consumer.run(consumer_stop), name=_task_name(consumer))
                for consumer in consumers
            ]
            self.running[name] = (consumers, consumer_stop, tasks)
            log.info(
                "worker %s: delivering to destination %s (type %s, plugin %s) of workspace "
                "version %d",
                self.worker.consumer,
                name,
                sink.type,
                sink.plugin,
                active.version if active else 0,
            )


def _task_name(consumer: SinkConsumer) -> str:
    return f"signalsmith-{'replay' if consumer.replay else 'sink'}-{consumer.sink.name}"


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
