"""The observer: what every stage did, written to Redis off the request path.

``observe_outcomes`` only appends the outcome list to an in-process queue (bounded: past
``queue_max_outcomes`` new outcomes are counted and not kept), so a request pays a list append.
A flusher task wakes once outcomes wait, lets ``flush_seconds`` of them gather, turns them into
``Record``s and writes them with one Redis pipeline: per source, live stream entries; per
messageId, one trace member holding its records of the flush (the normalise and buffer records of
a request usually share one). An event's JSON is kept where it was first seen and wherever a
stage changed it (a new object), so a trace shows what a transform or a contract did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from signalsmith import EventBase, Outcome
from signalsmith_debugger.config import DebuggerConfig
from signalsmith_debugger.masking import SecretMask
from signalsmith_debugger.payloads import (
    Summary,
    event_payload,
    event_summary,
    may_hold_write_key,
    message_payload,
    message_summary,
    shorten,
)
from signalsmith_debugger.records import (
    FAILURE_STATUSES,
    NO_SOURCE,
    Record,
    record_encoder,
    records_decoder,
)
from signalsmith_debugger.store import (
    DebuggerKeys,
    MemberWriter,
    SliceCursor,
    member_cost,
)

if TYPE_CHECKING:
    from signalsmith import Runtime

log = logging.getLogger("signalsmith.debugger")

# A messageId longer than the core accepts cannot be an event's: not traced.
MAX_TRACED_ID_CHARS = 100
REASON_CHARS = 1000
DETAIL_CHARS = 2000
# Stages before normalisation: a message refused there arrived, and counts as an event received.
ARRIVAL_STAGES = frozenset({"normalise", "parse", "authenticate", "admit"})
# Events whose payload this process recorded, by messageId, until their buffer outcome: a bound
# for requests whose buffer outcome never comes (a client gone mid-request, a full queue).
MAX_REMEMBERED = 50_000
# A flush builds this many observed lists (a request's outcomes each), then lets the event loop
# run: a large flush never holds requests up for long.
BUILD_LISTS_AT_ONCE = 16
# ... and encodes this many trace members between two such pauses.
ENCODE_MEMBERS_AT_ONCE = 1000
# Redis errors are logged at most this often.
WARN_EVERY_SECONDS = 30.0
_EMPTY: Summary = (None, None, None, None)


# A record as built: a tuple of ``Record``'s fields, in order (the payload fields only when set).
RecordFields = tuple[Any, ...]
# Where a record's fields end when it carries no payload (``Record``'s first 14 fields).
WITHOUT_PAYLOAD = 14


class Flush(msgspec.Struct, kw_only=True):
    """One flush's records, by source (live) and by messageId (traces)."""

    by_source: dict[str, list[RecordFields]] = {}
    by_message: dict[str, list[RecordFields]] = {}
    # Each event's summary, by the id of the event object (alive while the flush is built: its
    # outcomes hold it); the normalise and buffer outcomes of a request share one.
    summaries: dict[int, Summary] = {}


class Recorder:
    """Queues outcomes on the request path and writes them to Redis from a task of its own."""

    def __init__(self, runtime: Runtime, config: DebuggerConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.keys = DebuggerKeys.of(runtime)
        self.role = runtime.role
        self._queue: deque[tuple[float, list[Outcome]]] = deque()
        self._queued = 0
        # Outcomes not kept (queue full, or Redis failing), not yet reported to Redis.
        self._unrecorded = 0
        self.unrecorded_total = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The identity of the event whose payload was kept last, by messageId, until its buffer
        # outcome (``build``).
        self._remembered: dict[str, tuple[int, Any]] = {}
        self._cursor = SliceCursor(config)
        self._members = MemberWriter()
        self._mask = SecretMask(runtime)
        self._sink_kinds: dict[str, str] = {}
        self._warned_at = 0.0
        self.flushes = 0

    # -- the request path --

    def take(self, outcomes: list[Outcome]) -> None:
        """Queue ``outcomes`` for the next flush (the observer hook; never waits)."""
        count = len(outcomes)
        if self._queued + count > self.config.queue_max_outcomes:
            self._unrecorded += count  # reported by the next flush
        else:
            self._queue.append((time.time(), outcomes))
            self._queued += count
        if not self._wake.is_set():
            self._wake.set()

    # -- the flusher --

    async def start(self) -> None:
        try:
            names = [
                name.decode() if isinstance(name, bytes) else name
                for name in await self.runtime.redis.hkeys(self.keys.slices)
            ]
        except RedisError as error:
            log.warning("debugger: cannot read the trace slices yet: %s", error)
            names = []
        self._cursor.resume(names, time.time())
        self._task = asyncio.create_task(self._run(), name="debugger-recorder")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Let a flush's worth gather: one pipeline for many requests.
            await asyncio.sleep(self.config.flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued now (one pipeline)."""
        self._wake.clear()
        taken = list(self._queue)
        self._queue.clear()
        self._queued = 0
        unrecorded, self._unrecorded = self._unrecorded, 0
        if not taken and not unrecorded:
            return
        built = Flush(by_source={}, by_message={}, summaries={})
        for start in range(0, len(taken), BUILD_LISTS_AT_ONCE):
            self.build(taken[start : start + BUILD_LISTS_AT_ONCE], built)
            await asyncio.sleep(0)  # requests in flight go on between the pieces
        try:
            await self._write(built, unrecorded)
        except (RedisError, OSError) as error:
            lost = sum(len(outcomes) for _, outcomes in taken)
            self._unrecorded += lost + unrecorded
            now = time.monotonic()
            if now - self._warned_at > WARN_EVERY_SECONDS:
                self._warned_at = now
                log.warning("debugger: %d outcomes not recorded (Redis: %s)", lost, error)
        except Exception:
            log.exception("debugger: a flush failed")
        self.flushes += 1

    # -- outcomes into records --

    def build(self, taken: list[tuple[float, list[Outcome]]], flush: Flush | None = None) -> Flush:
        """The records of ``taken`` (added to ``flush``), by source and by messageId.

        The hot path of the debugger: each record is a tuple in ``Record``'s field order (what
        msgpack stores; ``Record`` decodes it), the summary is computed once per event object,
        and an event's JSON only where this process sees it first or changed.
        """
        flush = flush if flush is not None else Flush(by_source={}, by_message={}, summaries={})
        by_source, by_message = flush.by_source, flush.by_message
        role = self.role
        remembered = self._remembered
        summaries = flush.summaries
        for at, outcomes in taken:
            for outcome in outcomes:
                event = outcome.event
                message_id = outcome.message_id
                stage = outcome.stage
                status = outcome.status
                shown = None
                if event is not None:
                    summary = summaries.get(id(event))
                    if summary is None:
                        summary = summaries[id(event)] = event_summary(event)
                    if stage != "deliver" and message_id is not None:
                        # The event's identity, without holding it: an object's id is unique
                        # while it lives, and a later request's event has its own receivedAt.
                        identity = (id(event), event.received_at)
                        if remembered.get(message_id) != identity:
                            # First seen here, or a stage made a new event: keep it (encoded
                            # with its record; its size and write keys are checked then).
                            shown = (event, 0, False)
                            remembered[message_id] = identity
                            if len(remembered) > MAX_REMEMBERED:
                                del remembered[next(iter(remembered))]
                        if stage == "buffer" or status == "rejected" or status == "dropped":
                            del remembered[message_id]  # the end of its way through here
                elif outcome.payload is not None:
                    shown, value = message_payload(outcome.payload, self.config.payload_bytes)
                    summary, written_id = message_summary(value)
                    if message_id is None and written_id and len(written_id) <= MAX_TRACED_ID_CHARS:
                        message_id = written_id  # refused before normalisation: traced by it
                else:
                    summary = _EMPTY
                reason, detail, sink = outcome.reason, outcome.detail, outcome.sink
                if reason is not None:
                    reason = self._mask(shorten(reason, REASON_CHARS))
                if detail is not None:
                    detail = self._mask(shorten(detail, DETAIL_CHARS))
                source = outcome.source_id or NO_SOURCE
                fields = (
                    at,
                    stage,
                    status,
                    message_id,
                    source,
                    *summary,
                    reason,
                    detail,
                    sink,
                    self._sink_kind(sink) if sink is not None else None,
                    role,
                )
                if shown is not None:
                    fields += tuple(shown)
                records = by_source.get(source)
                if records is None:
                    records = by_source[source] = []
                records.append(fields)
                if message_id is not None:
                    of_message = by_message.get(message_id)
                    if of_message is None:
                        by_message[message_id] = [fields]
                    else:
                        of_message.append(fields)
        return flush

    def record(self, at: float, outcome: Outcome) -> Record:
        """One outcome as the debugger keeps it (``build`` for one, decoded)."""
        [fields] = self.build([(at, [outcome])]).by_source.popitem()[1]
        return records_decoder.decode(record_encoder.encode([fields]))[0]

    async def _members_of(self, flush: Flush) -> list[bytes]:
        """Each messageId's trace member: its records of this flush, encoded together.

        An event goes into the encoding as it is (no copy of it is made first); a member long
        enough that one of its events might be past the payload cap as JSON, or that may hold a
        write key, is encoded again with its events checked (``event_payload``).
        """
        cap = self.config.payload_bytes
        suspicious = cap // 2  # msgpack is shorter than JSON, never by half
        encode = record_encoder.encode
        member = self._members.member
        members = []
        for message_id, records in flush.by_message.items():
            encoded = encode(records)
            if len(encoded) > suspicious or may_hold_write_key(encoded):
                encoded = encode([_checked(record, cap) for record in records])
            members.append(member(message_id, records[0][0], encoded))
            if len(members) % ENCODE_MEMBERS_AT_ONCE == 0:
                await asyncio.sleep(0)
        return members

    def _sink_kind(self, name: str) -> str:
        kind = self._sink_kinds.get(name)
        if kind is None:
            kind = next(
                (sink.kind for sink in self.runtime.sinks if sink.name == name), "destination"
            )
            self._sink_kinds[name] = kind
        return kind

    # -- records into Redis --

    async def _write(self, flush: Flush, unrecorded: int) -> None:
        config = self.config
        keys = self.keys
        now = time.time()
        slice_name = None
        slice_total_at = -1
        async with self.runtime.redis.pipeline(transaction=False) as pipe:
            for source, records in flush.by_source.items():
                live = keys.live(source)
                per_entry = config.live_records_per_entry
                for start in range(0, len(records), per_entry):
                    chunk = records[start : start + per_entry]
                    pipe.xadd(
                        live,
                        _live_fields(chunk),
                        maxlen=config.live_max_entries,
                        approximate=True,
                    )
                pipe.expire(live, config.live_seconds * 2)
            if flush.by_source:
                pipe.hset(keys.sources, mapping=dict.fromkeys(flush.by_source, int(now)))
            if flush.by_message:
                slice_name = self._cursor.current(now)
                members = await self._members_of(flush)
                accounted = sum(member_cost(member) for member in members)
                slice_key = keys.slice(slice_name)
                pipe.zadd(slice_key, dict.fromkeys(members, 0))
                # Kept past the retention by one slice, so its first member is kept that long.
                keep = config.trace_seconds + 2 * config.slice_seconds
                pipe.expire(slice_key, keep)
                slice_total_at = len(pipe.command_stack)
                pipe.hincrby(keys.slices, slice_name, accounted)
                pipe.expire(keys.slices, keep)
            if unrecorded:
                pipe.hincrby(keys.unrecorded, self.role, unrecorded)
                pipe.expire(keys.unrecorded, config.live_seconds * 2)
            replies = await pipe.execute()
        if unrecorded:
            self.unrecorded_total += unrecorded
            log.warning(
                "debugger: %d outcomes were not recorded (queue full at %d)",
                unrecorded,
                config.queue_max_outcomes,
            )
        if slice_name is not None:
            self._cursor.accounted(slice_name, int(replies[slice_total_at]))


def _checked(record: RecordFields, cap: int) -> RecordFields:
    """A record whose event payload is replaced by what ``event_payload`` keeps of it."""
    if len(record) <= WITHOUT_PAYLOAD or not isinstance(record[WITHOUT_PAYLOAD], EventBase):
        return record
    return record[:WITHOUT_PAYLOAD] + tuple(event_payload(record[WITHOUT_PAYLOAD], cap))


def _live_fields(records: list[RecordFields]) -> dict[str, bytes | int]:
    """A live entry: the records without their payloads (the trace has them), except for
    messages no trace can hold (no messageId), and the counts the chart draws."""
    listed = [record[:WITHOUT_PAYLOAD] if record[3] is not None else record for record in records]
    received = violations = failures = 0
    for record in records:
        stage, status = record[1], record[2]
        if status == "violation":
            violations += 1
        elif status in FAILURE_STATUSES:
            failures += 1
        if stage in ARRIVAL_STAGES and (status == "accepted" or status == "rejected"):
            received += 1
    return {
        "r": record_encoder.encode(listed),
        "n": len(records),
        "e": received,
        "v": violations,
        "f": failures,
    }
