"""The observer: what every stage did, kept in Redis for the live page and the traces.

The routine path costs the collector's requests next to nothing: the plugin declines the
routine outcomes (``wants_routine_outcomes``), so the collector reports only what is not routine
(rejections and refusals with what was sent, violations, drops, duplicates, and the event as
received wherever a stage replaced it) plus a count per request. Every buffered event is
recorded by the worker instead: the plugin's sink (``SINK_NAME``, with its own consumer group
on the event stream) hands each batch to ``Recorder.take_buffered``, which records it as
accepted (the event) and buffered, per source.

``observe_outcomes`` hands each list of outcomes (a request's stage, a sink's settled batch) to
``Recorder.take``, which turns it into one ``Entry`` per source, stage and sink and encodes it at
once: a few list comprehensions and one msgpack encoding (each event encoded once, in C), so no
event is held past the call. An event is kept where a list first shows it and wherever a stage
changed it (a new event), so a trace shows what each stage did; it is checked against the
payload cap and for write keys only when its encoding is long enough to be past the cap, or
holds one of the names.

A task of the recorder's own wakes once entries wait, lets ``flush_seconds`` of them gather, and
writes them with one Redis pipeline: per source, live stream entries holding the encoded entries;
per slice, each entry once and one index member per messageId saying where its outcomes are.
The queue is bounded (``queue_max_outcomes``): past it, new outcomes are counted and not kept,
so a slow Redis never grows a process's memory or slows its requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from redis.exceptions import RedisError

from signalsmith import Event, Outcome
from signalsmith_debugger.config import DebuggerConfig
from signalsmith_debugger.masking import SecretMask
from signalsmith_debugger.packed import Command, execute, pack_zadd
from signalsmith_debugger.payloads import (
    event_payload,
    may_hold_write_key,
    message_payload,
    message_summary,
    shorten,
)
from signalsmith_debugger.records import (
    FAILURE_STATUSES,
    NO_SOURCE,
    VIA_STREAM,
    Entry,
    entry_encoder,
)
from signalsmith_debugger.store import (
    DebuggerKeys,
    MemberWriter,
    SliceCursor,
    frame,
    index_member,
    member_cost,
    reference,
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
# The sink through which the worker hands the debugger every buffered event.
SINK_NAME = "debugger"
# Buffered events one batch of that sink holds at most.
SINK_BATCH_EVENTS = 1000
# Redis errors are logged at most this often.
WARN_EVERY_SECONDS = 30.0

_msgpack = msgspec.msgpack.Encoder()


class Encoded(NamedTuple):
    """An entry ready to write: its source, the messageIds it holds, its bytes, its counts."""

    source_id: str
    message_ids: list[str | None]
    data: bytes
    outcomes: int
    received: int
    violations: int
    failures: int


class Recorder:
    """Encodes outcome lists on the request path; writes them from a task of its own."""

    def __init__(self, runtime: Runtime, config: DebuggerConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.keys = DebuggerKeys.of(runtime)
        self.role = runtime.role
        self._queue: deque[Encoded] = deque()
        self._queued = 0
        # Outcomes not kept (queue full, or Redis failing), not yet reported to Redis.
        self._unrecorded = 0
        self.unrecorded_total = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Events received by source (the collector's batch-level outcomes), for the live chart.
        self._received: dict[str, int] = {}
        self._cursor = SliceCursor(config)
        self._members = MemberWriter()
        self._mask = SecretMask(runtime)
        self._sink_kinds: dict[str, str] = {}
        self._warned_at = 0.0
        self.flushes = 0

    # -- the request path --

    def take(self, outcomes: list[Outcome]) -> None:
        """Encode ``outcomes`` for the next flush (the observer hook; never waits)."""
        if not outcomes:
            return
        first = outcomes[0]
        if first.message_id is None and first.status in ("accepted", "buffered"):
            # A request's batch-level outcomes (the collector's lean lists start with one).
            outcomes = self._count(outcomes)
        elif first.sink == SINK_NAME:
            return  # the worker reporting this plugin's own sink
        elif first.stage == "deliver" and any(o.sink == SINK_NAME for o in outcomes):
            outcomes = [outcome for outcome in outcomes if outcome.sink != SINK_NAME]
        count = len(outcomes)
        if count:
            self._queue_outcomes(outcomes, count)
        if not self._wake.is_set():
            self._wake.set()

    def _count(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Count the batch-level outcomes of ``outcomes``; the others, to be recorded."""
        rest = []
        received = self._received
        for outcome in outcomes:
            if outcome.message_id is None and outcome.status in ("accepted", "buffered"):
                if outcome.status == "accepted":
                    source = outcome.source_id or NO_SOURCE
                    received[source] = received.get(source, 0) + outcome.count
            else:
                rest.append(outcome)
        return rest

    def _queue_outcomes(self, outcomes: list[Outcome], count: int) -> None:
        if self._queued + count > self.config.queue_max_outcomes:
            self._unrecorded += count  # reported by the next flush
            return
        at = time.time()
        first = outcomes[0]
        key = (first.source_id, first.stage, first.sink)
        # Events shown already by this list, by messageId: shown again only where changed.
        shown: dict[str, Any] = {}
        if all((o.source_id, o.stage, o.sink) == key for o in outcomes):
            self._queue.append(self._encode(at, outcomes, shown))
        else:  # a worker's batch of several sources, or a plugin's mixed outcomes
            groups: dict[tuple[Any, ...], list[Outcome]] = {}
            for outcome in outcomes:
                group_key = (outcome.source_id, outcome.stage, outcome.sink)
                groups.setdefault(group_key, []).append(outcome)
            self._queue.extend(self._encode(at, group, shown) for group in groups.values())
        self._queued += count

    def take_buffered(self, events: list[Event]) -> None:
        """Record a batch of buffered events (the worker, through this plugin's sink): per
        source, one entry showing each event as accepted, one saying it was buffered."""
        count = 2 * len(events)
        if not count:
            return
        if self._queued + count > self.config.queue_max_outcomes:
            self._unrecorded += count
            return
        by_source: dict[str, list[Event]] = {}
        for event in events:
            by_source.setdefault(event.project_id or NO_SOURCE, []).append(event)
        now = time.time()
        for source_id, group in by_source.items():
            message_ids: list[str | None] = [event.message_id for event in group]
            payloads, sizes = self._event_payloads(group)
            received_at = min(event.received_at for event in group).timestamp()
            for stage, status, at, shown, shown_sizes in (
                ("normalise", "accepted", min(received_at, now), payloads, sizes),
                ("buffer", "buffered", now, None, None),
            ):
                entry = Entry(
                    at=at,
                    stage=stage,
                    source_id=source_id,
                    role=self.role,
                    message_ids=message_ids,
                    status=status,
                    payloads=shown,
                    sizes=shown_sizes,
                    via=VIA_STREAM,
                )
                # Not counted as received: the collector counted them as they arrived.
                self._queue.append(
                    Encoded(
                        source_id, message_ids, entry_encoder.encode(entry), len(group), 0, 0, 0
                    )
                )
        self._queued += count
        if not self._wake.is_set():
            self._wake.set()

    def _event_payloads(self, events: list[Event]) -> tuple[list[Any], list[int] | None]:
        """Each event as a trace shows it (capped, write keys hidden), and the full sizes of
        those shortened."""
        cap = self.config.payload_bytes
        payloads: list[Any] = []
        sizes: list[int] | None = None
        for position, event in enumerate(events):
            encoded, full_size = _encode_shown(event, cap)
            if full_size is not None:
                sizes = sizes or [0] * len(events)
                sizes[position] = full_size
            payloads.append(msgspec.Raw(encoded))
        return payloads, sizes

    def _encode(self, at: float, outcomes: list[Outcome], shown: dict[str, Any]) -> Encoded:
        """One entry of outcomes that share their source, stage and sink."""
        first = outcomes[0]
        stage = first.stage
        count = len(outcomes)
        message_ids = [outcome.message_id for outcome in outcomes]
        statuses: list[str] | None = [outcome.status for outcome in outcomes]
        status = first.status
        if statuses.count(status) == count:  # type: ignore[union-attr]
            statuses = None
        reasons = self._texts([outcome.reason for outcome in outcomes], REASON_CHARS)
        details = self._texts([outcome.detail for outcome in outcomes], DETAIL_CHARS)
        payloads: list[Any] | None = None
        sizes: list[int] | None = None
        summaries: list[Any] | None = None
        if stage != "deliver":
            payloads, sizes, summaries = self._payloads(outcomes, message_ids, shown)
        entry = Entry(
            at=at,
            stage=stage,
            source_id=first.source_id or NO_SOURCE,
            role=self.role,
            message_ids=message_ids,
            status="" if statuses is not None else status,
            statuses=statuses,
            reasons=reasons,
            details=details,
            sink=first.sink,
            sink_kind=self._sink_kind(first.sink) if first.sink is not None else None,
            payloads=payloads,
            sizes=sizes,
            summaries=summaries,
        )
        if statuses is None:
            received = (
                count if stage in ARRIVAL_STAGES and status in ("accepted", "rejected") else 0
            )
            violations = count if status == "violation" else 0
            failures = count if status in FAILURE_STATUSES else 0
        else:
            received = (
                statuses.count("accepted") + statuses.count("rejected")
                if stage in ARRIVAL_STAGES
                else 0
            )
            violations = statuses.count("violation")
            failures = sum(statuses.count(failed) for failed in FAILURE_STATUSES)
        return Encoded(
            source_id=entry.source_id,
            message_ids=message_ids,
            data=entry_encoder.encode(entry),
            outcomes=count,
            received=received,
            violations=violations,
            failures=failures,
        )

    def _payloads(
        self, outcomes: list[Outcome], message_ids: list[str | None], shown_by: dict[str, Any]
    ) -> tuple[list[Any] | None, list[int] | None, list[Any] | None]:
        """What each outcome shows of its event (None where ``shown_by`` has it already)."""
        cap = self.config.payload_bytes
        remembered = shown_by
        payloads: list[Any] = [None] * len(outcomes)
        sizes: list[int] | None = None
        summaries: list[Any] | None = None
        kept = False
        for position, outcome in enumerate(outcomes):
            event = outcome.event
            message_id = outcome.message_id
            if event is not None and message_id is not None:
                if remembered.get(message_id) is not event:
                    encoded, full_size = _encode_shown(event, cap)
                    if full_size is not None:
                        sizes = sizes or [0] * len(outcomes)
                        sizes[position] = full_size
                    payloads[position] = msgspec.Raw(encoded)
                    kept = True
                    remembered[message_id] = event
            elif event is None and outcome.payload is not None:
                shown, value = message_payload(outcome.payload, cap)
                summary, written_id = message_summary(value)
                payloads[position] = shown.value
                kept = True
                if shown.truncated:
                    sizes = sizes or [0] * len(outcomes)
                    sizes[position] = shown.size
                summaries = summaries or [None] * len(outcomes)
                summaries[position] = summary
                if message_id is None and written_id and len(written_id) <= MAX_TRACED_ID_CHARS:
                    message_ids[position] = written_id  # refused before it was an event
        return (payloads if kept else None), sizes, summaries

    def _texts(self, texts: list[str | None], limit: int) -> list[str | None] | None:
        if texts.count(None) == len(texts):
            return None
        mask = self._mask
        return [None if text is None else mask(shorten(text, limit)) for text in texts]

    def _sink_kind(self, name: str) -> str:
        kind = self._sink_kinds.get(name)
        if kind is None:
            kind = next(
                (sink.kind for sink in self.runtime.sinks if sink.name == name), "destination"
            )
            self._sink_kinds[name] = kind
        return kind

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
        received, self._received = self._received, {}
        if received:
            # The counts ride with the entries, in an entry of their own per source.
            taken += [
                Encoded(source, [], b"", 0, count, 0, 0) for source, count in received.items()
            ]
        if not taken and not unrecorded:
            return
        try:
            await self._write(taken, unrecorded)
        except (RedisError, OSError) as error:
            lost = sum(encoded.outcomes for encoded in taken)
            self._unrecorded += lost + unrecorded
            now = time.monotonic()
            if now - self._warned_at > WARN_EVERY_SECONDS:
                self._warned_at = now
                log.warning("debugger: %d outcomes not recorded (Redis: %s)", lost, error)
        except Exception:
            log.exception("debugger: a flush failed")
        self.flushes += 1

    async def _write(self, taken: list[Encoded], unrecorded: int) -> None:
        config = self.config
        keys = self.keys
        now = time.time()
        by_source: dict[str, list[tuple[Encoded, bytes | None]]] = {}
        members: list[bytes] = []
        references: dict[str, list[bytes]] = {}
        writer = self._members
        for encoded in taken:
            if not encoded.data:  # counts only
                by_source.setdefault(encoded.source_id, []).append((encoded, None))
                continue
            if encoded.message_ids.count(None) == len(encoded.message_ids):
                # Nothing a trace can be found by: the live stream holds it itself.
                by_source.setdefault(encoded.source_id, []).append((encoded, None))
                continue
            key = writer.entry_key()
            by_source.setdefault(encoded.source_id, []).append((encoded, key))
            members.append(writer.entry_member(key, encoded.data))
            for position, message_id in enumerate(encoded.message_ids):
                if message_id is not None:
                    found = references.get(message_id)
                    if found is None:
                        references[message_id] = [reference(key, position)]
                    else:
                        found.append(reference(key, position))
        members += [index_member(message_id, found) for message_id, found in references.items()]
        slice_name = self._cursor.current(now) if members else ""
        commands: list[Command | bytes] = []
        for source, entries in by_source.items():
            live = keys.live(source)
            for chunk in _chunks(entries, config.live_records_per_entry):
                commands.append(
                    (
                        b"XADD",
                        live,
                        b"MAXLEN",
                        b"~",
                        config.live_max_entries,
                        b"*",
                        *_live_fields(chunk, slice_name),
                    )
                )
            commands.append((b"EXPIRE", live, config.live_seconds * 2))
        if by_source:
            seen = int(now)
            commands.append(
                (b"HSET", keys.sources, *(part for s in by_source for part in (s, seen)))
            )
        slice_total_at = -1
        if members:
            slice_key = keys.slice(slice_name)
            commands.append(pack_zadd(slice_key, members))
            # Kept past the retention by one slice, so its first member is kept that long.
            keep = config.trace_seconds + 2 * config.slice_seconds
            commands.append((b"EXPIRE", slice_key, keep))
            slice_total_at = len(commands)
            accounted = sum(member_cost(member) for member in members)
            commands.append((b"HINCRBY", keys.slices, slice_name, accounted))
            commands.append((b"EXPIRE", keys.slices, keep))
        if unrecorded:
            commands.append((b"HINCRBY", keys.unrecorded, self.role, unrecorded))
            commands.append((b"EXPIRE", keys.unrecorded, config.live_seconds * 2))
        replies = await execute(self.runtime.redis, commands)
        failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if failed is not None:
            raise failed
        if unrecorded:
            self.unrecorded_total += unrecorded
            log.warning(
                "debugger: %d outcomes were not recorded (queue full at %d)",
                unrecorded,
                config.queue_max_outcomes,
            )
        if members:
            self._cursor.accounted(slice_name, int(replies[slice_total_at]))


def _encode_shown(event: Any, cap: int) -> tuple[bytes, int | None]:
    """``event`` encoded as a trace shows it (capped, write keys hidden), and its full size
    when it was shortened. Only an encoding long enough to be past the cap as JSON, or holding
    one of the names, is looked at closer."""
    encoded = _msgpack.encode(event)
    if 2 * len(encoded) > cap or may_hold_write_key(encoded):
        shown = event_payload(event, cap)
        if shown.value is not event:
            encoded = _msgpack.encode(shown.value)
            if shown.truncated:
                return encoded, shown.size
    return encoded, None


def _chunks(
    entries: list[tuple[Encoded, bytes | None]], outcomes: int
) -> list[list[tuple[Encoded, bytes | None]]]:
    """Entries in groups of about ``outcomes`` outcomes (an entry is never split)."""
    chunks: list[list[tuple[Encoded, bytes | None]]] = []
    current: list[tuple[Encoded, bytes | None]] = []
    size = 0
    for item in entries:
        count = item[0].outcomes
        if current and size + count > outcomes:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += count
    if current:
        chunks.append(current)
    return chunks


def _live_fields(entries: list[tuple[Encoded, bytes | None]], slice_name: str) -> tuple[Any, ...]:
    """A live stream entry's fields: where its entries are in the trace slice (``s``, the
    slice; ``k``, their keys), the entries no trace holds (``x``, framed), and the counts the
    chart draws."""
    keys = [key for _, key in entries if key is not None]
    inline = [encoded.data for encoded, key in entries if key is None and encoded.data]
    fields: list[Any] = []
    if keys:
        fields += (b"s", slice_name, b"k", b"".join(keys))
    if inline:
        fields += (b"x", frame(inline))
    return (
        *fields,
        b"n",
        sum(encoded.outcomes for encoded, _ in entries),
        b"e",
        sum(encoded.received for encoded, _ in entries),
        b"v",
        sum(encoded.violations for encoded, _ in entries),
        b"f",
        sum(encoded.failures for encoded, _ in entries),
    )
